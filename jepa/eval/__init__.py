"""Frozen-encoder evaluation (``python -m jepa.eval``); the names other modules use, in one place."""
from jepa.eval.command import (FEATURES, KNN, LINEAR_PROBE, METHODS, PROTOCOLS, evaluate, extract_features,
                               format_table, knn_accuracy, knn_predict, knn_predict_many, linear_probe, load_source,
                               main, random_init_encoder, report_path, run_data_root, run_protocols, write_report)

__all__ = ["FEATURES", "KNN", "LINEAR_PROBE", "METHODS", "PROTOCOLS", "evaluate", "extract_features", "format_table",
           "knn_accuracy", "knn_predict", "knn_predict_many", "linear_probe", "load_source", "main",
           "random_init_encoder", "report_path", "run_data_root", "run_protocols", "write_report"]
