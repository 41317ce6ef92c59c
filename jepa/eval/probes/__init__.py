"""Every probe of a frozen encoder: on cached features (``linear``: L-BFGS, ``knn``) and streamed over the images
(``linear_sgd``, ``attentive``), with the labelled batches they and fine-tuning train on (``data``).

Settings of the streamed probes are the ``probe`` and ``finetune`` sections of ``jepa.config``.
"""
