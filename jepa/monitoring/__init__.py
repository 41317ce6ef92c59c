"""What a run reports while it trains: the progress line and TensorBoard logger (``logger``, ``progress``),
RankMe (``rankme``), the collapse alarm (``collapse``) and the k-NN monitor (``knn``).

Nothing is imported here, so ``jepa.monitoring.progress`` stays cheap for the commands that only draw a line.
"""
