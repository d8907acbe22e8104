"""Pure tensor math of the RLHF algorithms, with shape comments and paper references."""
