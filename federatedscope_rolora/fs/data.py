"""GLUE for FederatedScope: the registered data builder.

The same train and test examples as the embedded runner (same files, same
seeded subsets), tokenised once, then handed to FederatedScope's own
``BaseDataTranslator`` so its splitters (``iid``, ``lda``) deal them to the
clients. FederatedScope builds plain ``DataLoader``s with the default
collate and probes a batch for the input shape, so each example is one
tensor of fixed width (``llm.tok_len``): the trainer cuts every batch back
to its longest row, which saves what padding would waste.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from federatedscope_rolora.config import ConfigError
from federatedscope_rolora.fs.cfg_rolora import (
    fs_task,
    model_name,
    remember_run_config,
    schema_view,
)
from federatedscope_rolora.fs.prefix import remember_inputs
from federatedscope_rolora.runners.setup import (
    data_digest,
    deal_train,
    sample_warnings,
)
from federatedscope_rolora.training.encoding import EncodedDataset, encode
from federatedscope_rolora.training.glue import Split, load_task
from federatedscope_rolora.training.models import load_tokenizer
from federatedscope_rolora.training.partition import subsample_indices

# Rows of an example tensor: token ids, attention mask[, token types].
IDS, MASK, TYPES = 0, 1, 2
# The sha256 of the train and test rows as read (setup.data_digest), kept
# by the data builder: the test rows' for the summary, which ``eval``
# checks its rows against, both for ``dealt_digest``.
_read_digests: dict[str, str] = {}
# ``dealt_digest``'s value for the data this process built.
_dealt_digest: list[str] = []

logger = logging.getLogger("federatedscope.rolora")


def test_digest() -> dict[str, str]:
    """``summary.json``'s ``data_digest``: the test rows' only, since
    FederatedScope's splitter deals the train rows."""
    return {"test": _read_digests["test"]} if _read_digests else {}


def dealt_digest() -> str:
    """sha256 of the train and test rows this process read and of how
    FederatedScope's splitter dealt them to the clients: every process
    of a distributed run builds all of it from its own files, and the
    digests must agree ("" before the data is built)."""
    return _dealt_digest[-1] if _dealt_digest else ""


def _deal_digest(data: Any) -> str:
    """``dealt_digest`` of FederatedScope's data dict (party -> its
    ``ClientData``), the rows as read by ``glue_rows``."""
    def rows(dataset: Any) -> Any:
        if isinstance(dataset, Subset):
            return [int(i) for i in dataset.indices]
        return None if dataset is None else len(dataset)

    dealt = {party: [rows(getattr(data[party], f"{split}_data", None))
                     for split in ("train", "val", "test")]
             for party in sorted(data)}
    payload = json.dumps([_read_digests, dealt], sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class GlueRows(Dataset[tuple[torch.Tensor, int]]):
    """Tokenised examples; item i is ``(x, label)`` with ``x`` of shape
    (2 or 3, max_len): ids, attention mask and, for tokenizers that make
    them, token types, right-padded. Built on access, so memory holds the
    unpadded token lists only."""

    def __init__(self, encoded: EncodedDataset, max_len: int,
                 pad_token_id: int) -> None:
        self.encoded = encoded
        self.max_len = max_len
        self.pad_token_id = pad_token_id

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        ids = self.encoded.input_ids[index]  # IndexError ends iteration
        rows = 2 if self.encoded.token_type_ids is None else 3
        x = torch.zeros(rows, self.max_len, dtype=torch.long)
        x[IDS].fill_(self.pad_token_id)
        x[IDS, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        x[MASK, :len(ids)] = 1
        if self.encoded.token_type_ids is not None:
            types = self.encoded.token_type_ids[index]
            x[TYPES, :len(types)] = torch.tensor(types, dtype=torch.long)
        return x, self.encoded.labels[index]

    def length(self, index: int) -> int:
        return len(self.encoded.input_ids[index])


def row_lengths(dataset: Any) -> list[int]:
    """Token count of each example of a GlueRows or a Subset of one."""
    if isinstance(dataset, GlueRows):
        return [len(ids) for ids in dataset.encoded.input_ids]
    if isinstance(dataset, Subset):
        inner = row_lengths(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    raise TypeError(f"not GLUE rows of this plugin: {type(dataset)}")


def _subset(split: Split, size: int, seed: int) -> Split:
    rows = subsample_indices(len(split), size or None, seed)
    return Split([split.texts[i] for i in rows],
                 [split.labels[i] for i in rows], split.source)


def glue_rows(config: Any) -> tuple[GlueRows, GlueRows]:
    """Train and test rows of the run: the embedded runner's subsets
    (``rolora.train_samples`` with the seed, ``rolora.eval_samples`` with
    seed + 1), tokenised to at most ``llm.tok_len`` tokens."""
    root = config.data.root or None
    train, test = load_task(str(config.data.type), root, seed=config.seed,
                            holdout=config.rolora.holdout)
    for warning in sample_warnings(config.rolora.train_samples, len(train),
                                   config.rolora.eval_samples, len(test)):
        logger.warning("rolora plugin: %s", warning)
    train = _subset(train, config.rolora.train_samples, config.seed)
    test = _subset(test, config.rolora.eval_samples, config.seed + 1)
    _read_digests.update(train=data_digest(train), test=data_digest(test))
    tokenizer = load_tokenizer(model_name(config.model.type))
    max_len = int(config.llm.tok_len)
    pad = int(tokenizer.pad_token_id)
    return (GlueRows(encode(train, tokenizer, max_len), max_len, pad),
            GlueRows(encode(test, tokenizer, max_len), max_len, pad))


def load_data(config: Any, client_cfgs: Any = None) -> tuple[Any, Any]:
    """Registered data builder: ``(data, config)`` as FederatedScope's
    ``get_data`` returns them, with ``model.num_labels`` set."""
    from federatedscope.core.auxiliaries.utils import setup_seed
    from federatedscope.core.data import BaseDataTranslator

    remember_run_config(config)
    train, test = glue_rows(config)
    view = schema_view(config)
    # The embedded runner's seeded split, tried and dropped: what it
    # refuses, FederatedScope's splitters would fail on later, deep in
    # its model builder (a client without data), in an assertion (lda
    # with no more examples than clients), or never (lda redraws until
    # every client has an example, where ours gives up after 1,000
    # draws).
    deal_train(view, train.encoded.labels)
    _check_test_labels(config, train.encoded.labels, test.encoded.labels)
    _check_client_entries(config, client_cfgs)
    remember_inputs(view, [train.encoded, test.encoded],
                    train.pad_token_id)
    # The splitters draw from numpy's global generator. FederatedScope
    # seeds it with a constant before calling a data builder; the run's
    # seed instead makes the split follow the seed, as the embedded
    # runner's does.
    setup_seed(config.seed)
    data = BaseDataTranslator(config, client_cfgs)((train, [], test))
    _dealt_digest[:] = [_deal_digest(data)]
    setup_seed(config.seed)
    config.model.num_labels = fs_task(config).num_labels
    return _for_this_process(data, config), config


def _check_test_labels(config: Any, train: Sequence[int],
                       test: Sequence[int]) -> None:
    """ConfigError where FederatedScope's ``lda`` splitter would deal
    the test rows by the train rows' label shares
    (``data.consistent_label_distribution``) but the two hold other
    labels: it stopped in a bare AssertionError (the embedded runner
    deals no test rows unless it scores each client's share)."""
    if str(config.data.splitter).lower() != "lda" or \
            not config.data.get("consistent_label_distribution", True):
        return
    names = fs_task(config).label_names
    only_train = sorted(set(train) - set(test))
    only_test = sorted(set(test) - set(train))
    if not (only_train or only_test):
        return
    what = "; ".join(f"{where}: {', '.join(names[i] for i in ids)}"
                     for where, ids in (("only in the train rows",
                                         only_train),
                                        ("only in the test rows",
                                         only_test)) if ids)
    raise ConfigError(
        f"data.splitter lda deals the {len(test)} test rows like the "
        f"{len(train)} train rows, label by label, so both need the same "
        f"labels ({what}); raise rolora.eval_samples or "
        "rolora.train_samples, or give dev.tsv rows of every label")


def _check_client_entries(config: Any, client_cfgs: Any) -> None:
    """ConfigError naming the ``--client_cfg`` entries that are not
    ``client_1`` .. ``client_N``, or the clients it leaves out:
    FederatedScope ignored an unknown one (``client1``, ``client_4`` of
    3) and stopped in a bare AssertionError at a missing one."""
    if client_cfgs is None:
        return
    want = [f"client_{i}" for i in
            range(1, int(config.federate.client_num) + 1)]
    given = [k for k in client_cfgs if not str(k).startswith("__")
             and k != "is_ready_for_run"]
    unknown = [k for k in given if k not in want]
    missing = [k for k in want if k not in given]
    if unknown or missing:
        parts = ([f"entries {', '.join(unknown)} name no client"]
                 if unknown else []) + \
            ([f"it has no entry for {', '.join(missing)}"] if missing else [])
        raise ConfigError(
            f"--client_cfg: {'; '.join(parts)}; FederatedScope needs one "
            f"entry per client, client_1 .. client_{len(want)} "
            "(federate.client_num)")


def data_share(config: Any, client_id: int) -> int:
    """The share of the train data a client trains on: its ID in
    standalone mode, ``distribute.data_idx`` in distributed mode (where
    each process reads its own; ``_for_this_process``)."""
    if config.federate.mode.lower() == "standalone":
        return int(client_id)
    return int(config.distribute.data_idx)


def _for_this_process(data: Any, config: Any) -> Any:
    """Standalone: every party's data. Distributed: this process's share;
    the server holds the whole test set for the global evaluation."""
    if config.federate.mode.lower() == "standalone":
        return data
    index = int(config.distribute.data_idx)
    server = config.distribute.role == "server"
    if index == -1 and server:
        index = 0
    # the server scores the whole test set; a client trains its own
    # share (a server on a client's share recorded that share's score as
    # the run's; a client on 0 trained on every example)
    if (index == 0) != server or index not in data:
        parties: Sequence[int] = sorted(data)
        want = "0 (or -1): it holds the test set" if server else \
            f"one of {parties[1:]}, its own share (0 is the server's)"
        raise ValueError(f"config key 'distribute.data_idx' is {index}; "
                         f"a {config.distribute.role} needs {want}")
    return data[index]
