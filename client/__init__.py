"""The hospital node: a Flower ClientApp that trains and evaluates on the site's own protocol data."""
