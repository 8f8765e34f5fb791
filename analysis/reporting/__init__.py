"""Reports of results: the Markdown report and its PNG figures, and the figures of the paper's
reproductions. Everything here reads result records; nothing computes a loss."""
