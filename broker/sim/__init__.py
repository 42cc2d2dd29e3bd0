"""The dispatch simulator: the broker's own code on a virtual clock, against a modelled
population of volunteers and recipients, to measure what a dispatch policy does."""
