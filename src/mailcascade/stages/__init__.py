"""The cascade's stages: plain typed functions. Stages never import each other."""
