"""A storage node: LMDB store, request dispatch, background work, statistics."""
