"""The policies domain's worker side: the fold of each scope's adoptions."""
