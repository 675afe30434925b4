"""Names in the messages between the FedGeo server and its clients.

Plain strings, kept in the library so that ``client/`` and ``server/`` share one
definition without importing each other (the library itself never imports Flower).
"""

ARRAYS = "arrays"
"""ArrayRecord: the global shared arrays (instruction) or the client's trained ones (reply)."""
CONFIG = "config"
"""ConfigRecord of the instruction."""
METRICS = "metrics"
"""MetricRecord of the reply."""
NUM_EXAMPLES = "num-examples"
"""Reply metric: number of local training examples (aggregation weight)."""
TRAIN_LOSS = "train-loss"
"""Reply metric: mean local training loss."""
SERVER_ROUND = "server-round"
"""Config: the current round (set by Flower's FedAvg)."""
PROXIMAL_MU = "proximal-mu"
"""Config: FedProx / FedGeo proximal weight (same key as Flower's FedProx)."""
FEDDYN_ALPHA = "feddyn-alpha"
"""Config: FedDyn regularization weight alpha."""
SCAFFOLD_CONTROL = "scaffold-control"
"""Train config: SCAFFOLD's client control update (run-config ``scaffold-control``)."""
SCAFFOLD_CONTROLS = ("auto", "option-ii", "mean-gradient")
"""Values of :data:`SCAFFOLD_CONTROL` (docs/method.md, SCAFFOLD)."""
LOCAL_ONLY = "local-only"
"""Config: 1 tells the client to train and evaluate its own full model (no federation)."""
SERVER_CONTROL = "server-control"
"""Instruction ArrayRecord: SCAFFOLD server control variate c."""
CONTROL_DELTA = "control-delta"
"""Reply ArrayRecord: SCAFFOLD client control change c_i+ - c_i."""
