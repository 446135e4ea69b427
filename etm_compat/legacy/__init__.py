"""Legacy deployments: what one is, finding them in a tree, resolving the one a path names."""
