"""The file-system model (issue 5): Q/U directory and attribute objects validated
server-side (seed 004 section 4.4.4), files as PASIS blocks, and an inode-level API with no
FUSE in it (docs/fs-api.md).  The objects' methods, which the nodes run too, are the
package :mod:`bftfs.fsobjects`; this package is the client side."""
