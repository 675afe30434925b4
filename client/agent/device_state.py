"""What the ClientApp keeps in the device agent's folder: the latest global model and status.

On a device (node config ``agent-dir``, set by :func:`client.agent.supernode.run_supernode`)
every ``train`` and ``evaluate`` instruction carries the current global shared arrays.
:func:`record_global_model` saves them as the agent's latest global model
(:mod:`fedgeo.models.portable`, with the metadata ``fedgeo agent predict`` needs) and
updates ``status.json`` (``last_round``, ``node_id``, ``run_key``, ``model_round``).

A ``train`` instruction of round ``r`` carries the model after round ``r - 1``; an
``evaluate`` of round ``r`` the model after round ``r``. A model that is not newer than
the one saved for the same run is not written again (unless the run started over from
an earlier round). Simulated clients save nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from client.data_source import ClientSource
from fedgeo.data.loading import DataSpec
from fedgeo.message_keys import DATA_SPEC, RUN_KEY

AGENT_DIR = "agent-dir"
"""Node-config key of the device agent's folder (:class:`client.agent.folder.AgentFolder`)."""

logger = logging.getLogger("fedgeo.client")


def model_metadata_from_instruction(
    config: Mapping[str, Any], source: ClientSource, model_round: int
) -> dict[str, Any]:
    """The portable-model metadata of the global arrays an instruction carries."""
    from fedgeo.message_keys import MODEL_CONFIG, PRIOR_CHECKSUM, PRIOR_CONFIG
    from fedgeo.models.portable import model_metadata

    checksum = str(config.get(PRIOR_CHECKSUM, ""))
    prior_json = str(config.get(PRIOR_CONFIG, "") or "null")
    extra: dict[str, Any] = {}
    if config.get(DATA_SPEC):
        extra["protocol"] = DataSpec.from_json(str(config[DATA_SPEC])).protocol.to_dict()
    return model_metadata(
        model_config=json.loads(str(config.get(MODEL_CONFIG, "{}"))),
        prior_config=json.loads(prior_json) if checksum else None,
        prior_checksum=checksum,
        places=source.data.places,
        server_round=model_round,
        run_key=str(config.get(RUN_KEY, "default")),
        **extra,
    )


def record_global_model(
    node_config: Mapping[str, Any],
    config: Mapping[str, Any],
    source: ClientSource,
    arrays: Mapping[str, np.ndarray],
    server_round: int,
    model_round: int,
) -> bool:
    """Save ``arrays`` (the global model after ``model_round``) and the status of an
    instruction of ``server_round`` into the agent folder; return whether the model was
    written. Does nothing for simulated clients or without ``agent-dir``. A failure to
    write (full disk, ...) is logged and never fails the instruction."""
    if source.simulated or not node_config.get(AGENT_DIR):
        return False
    from client.agent.folder import AgentFolder

    folder = AgentFolder(str(node_config[AGENT_DIR]))
    run_key = str(config.get(RUN_KEY, "default"))
    try:
        status = folder.read_status()
        folder.update_status(last_round=int(server_round), node_id=int(source.key))
        saved, last = status.get("model_round"), status.get("last_round")
        if (
            status.get("run_key") == run_key
            and isinstance(saved, int)
            and saved >= model_round
            and (not isinstance(last, int) or server_round >= last)
            and folder.model_path.is_file()
        ):
            return False  # this model (or a newer one of the same run) is saved already
        folder.save_model(arrays, model_metadata_from_instruction(config, source, model_round))
    except OSError as err:
        logger.warning("could not save the global model in %s: %s", folder.root, err)
        return False
    return True
