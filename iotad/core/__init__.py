"""The pure ML core: model, training, preprocessing, threshold, evaluation, detector (never imports flwr)."""
