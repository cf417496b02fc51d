"""Device meshes and the one table that maps logical parameter axes to mesh axes."""
