"""Generation: the decode loop, entropic perturbations (doses), dosed batches and prompt files."""
