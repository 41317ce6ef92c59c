"""Frozen-encoder evaluation: ``python -m jepa.eval`` and the pieces fine-tuning, the monitor and pictures reuse.

* ``features``: the encoders evaluated (a checkpoint's, the random-init baseline) and their features, cached;
* ``probes``: every probe: the L-BFGS linear probe and k-NN on cached features, the streamed SGD linear and
  attentive probes, and the labelled batches they train on;
* ``report``: the JSON report (where it goes, how results on one checkpoint merge) and its table;
* ``command``: ``evaluate`` (every protocol on a checkpoint and its baselines) and the command line.
"""
from jepa.eval.command import PROTOCOLS, evaluate, main, run_protocols
from jepa.eval.features import FEATURES, extract_features, load_source, random_init_encoder, run_data_root
from jepa.eval.probes.knn import KNN, knn_accuracy, knn_predict, knn_predict_many
from jepa.eval.probes.linear import LINEAR_PROBE, linear_probe
from jepa.eval.report import METHODS, format_table, report_path, write_report

__all__ = ["FEATURES", "KNN", "LINEAR_PROBE", "METHODS", "PROTOCOLS", "evaluate", "extract_features", "format_table",
           "knn_accuracy", "knn_predict", "knn_predict_many", "linear_probe", "load_source", "main",
           "random_init_encoder", "report_path", "run_data_root", "run_protocols", "write_report"]
