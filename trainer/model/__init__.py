"""M2GRL model: intra-view SGNS tasks, inter-view alignment tasks, uncertainty weighting, metric model."""
