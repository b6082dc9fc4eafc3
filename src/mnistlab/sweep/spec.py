"""The sweep file: a normal config (the base of every trial) plus a ``[sweep]`` table.

Everything is checked here, before Optuna is imported or a trial trains: the
``[sweep]`` keys, each search dimension, and every value a dimension can take,
applied to the base config with :func:`~mnistlab.config.apply_overrides` so a
wrong key or type fails now with the project's usual message.

>>> spec = sweep_from_dict({"train": {"epochs": 1}, "sweep": {"sampler": "grid",
...     "params": {"optimizer.lr": [0.001, 0.01], "train.batch_size": [64, 128]}}})
>>> spec.trials, spec.direction, len(grid_points(spec))
(4, 'maximize', 4)
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..config import Config, apply_overrides, config_from_dict
from ..errors import ConfigError

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "hyperband", "early_stopping")
DIRECTIONS = ("maximize", "minimize")
PARAM_TYPES = ("float", "int", "categorical")
# Selection happens on the validation split only; the test split stays unseen until a trial's final test.
OBJECTIVES = ("val_accuracy", "val_loss", "val_error", "ema_val_accuracy", "ema_val_loss")
DEFAULT_TRIALS = 20  # tpe / random when [sweep] gives no count


@dataclass(frozen=True)
class Param:
    """One search dimension: a dotted config key and the values it may take."""

    key: str  # "section.key" of the config
    type: str  # float | int | categorical (a grid list is categorical)
    low: float | None = None
    high: float | None = None
    step: float | None = None  # int: spacing of the values; float: None (continuous)
    log: bool = False  # sample uniformly in log space
    choices: tuple[Any, ...] = ()  # categorical: the config values

    def labels(self) -> tuple[Any, ...]:
        """Optuna stores only None/bool/int/float/str: a list value (model.channels) goes in as its JSON text."""
        return tuple(_label(c) for c in self.choices)

    def value_of(self, label: Any) -> Any:
        """The config value of an Optuna parameter value (the inverse of :meth:`labels`)."""
        if self.type != "categorical":
            return label
        for choice in self.choices:
            if _label(choice) == label:
                return choice
        raise ConfigError(f"{self.key}: {label!r} is not one of the choices {list(self.choices)}")


def _label(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class SweepSpec:
    base: Config  # every trial starts from this
    params: tuple[Param, ...]
    sampler: str = "tpe"
    trials: int = DEFAULT_TRIALS  # COMPLETE + PRUNED trials the study should hold in the end
    objective: str = "val_accuracy"  # best value over a trial's epochs
    direction: str = "maximize"
    pruner: str = "none"
    storage: str | None = None  # None: sqlite:///<out>/study.db
    study_name: str = "sweep"
    seed: int = 0  # sampler seed; the same seed gives the same trials (one worker)
    workers: int = 1  # processes sharing the study
    # Where the spec came from, so that worker processes can be started on the same file.
    source: Path | None = None
    overrides: tuple[str, ...] = ()
    data_dir: str | None = None

    def param(self, key: str) -> Param:
        return next(p for p in self.params if p.key == key)


_SWEEP_KEYS = ("sampler", "trials", "objective", "direction", "pruner", "storage", "study_name", "seed", "workers",
               "params")


def load_sweep(
    path: str | Path,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    data_dir: str | None = None,
    trials: int | None = None,
    workers: int | None = None,
    storage: str | None = None,
) -> SweepSpec:
    """Read and check a sweep file; the keyword arguments are the command line's, winning over the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a byte-order mark, as load_config
    except FileNotFoundError:
        raise ConfigError(f"sweep file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read sweep file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"sweep file {path} is not valid TOML: {e}") from None
    if "sweep" not in data:
        raise ConfigError(f"{path} has no [sweep] table; a sweep file is a config plus [sweep] and [sweep.params] "
                          "(see configs/sweep-example.toml)")
    sweep = dict(data["sweep"]) if isinstance(data["sweep"], dict) else data["sweep"]
    for flag, value in (("--trials", trials), ("--workers", workers)):
        if value is not None and value < 1:  # named as given, not as the sweep.trials it stands for
            raise ConfigError(f"{flag} must be 1 or more, got {value}")
    if isinstance(sweep, dict):
        sweep.setdefault("study_name", path.stem)
        for key, value in (("trials", trials), ("workers", workers), ("storage", storage)):
            if value is not None:
                sweep[key] = value
    try:
        spec = sweep_from_dict({**data, "sweep": sweep}, overrides=overrides, data_dir=data_dir)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return replace(spec, source=path)


def sweep_from_dict(
    data: dict[str, Any], *, overrides: list[str] | tuple[str, ...] = (), data_dir: str | None = None
) -> SweepSpec:
    """A SweepSpec from a parsed sweep file (a config dict with a ``sweep`` table)."""
    data = dict(data)
    sweep = data.pop("sweep", None)
    if not isinstance(sweep, dict):
        raise ConfigError(f"[sweep] must be a table of keys, got {sweep!r}")
    base = config_from_dict(data)
    if data_dir is not None:
        base = apply_overrides(base, {"data.dir": data_dir})
    base = apply_overrides(base, list(overrides))
    _known_model(base, "the base config")
    if base.data.val_size < 1:  # every trial would fail on it (train() refuses it), after the study is made
        from ..training.fit import VAL_SIZE_NEEDED

        raise ConfigError(VAL_SIZE_NEEDED)

    unknown = sorted(set(sweep) - set(_SWEEP_KEYS), key=str)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'sweep.{k}' for k in unknown)}; "
                          f"valid keys in [sweep]: {', '.join(_SWEEP_KEYS)}")
    sampler = _text(sweep, "sampler", "tpe", SAMPLERS)
    pruner = _text(sweep, "pruner", "none", PRUNERS)
    objective = _text(sweep, "objective", "val_accuracy", OBJECTIVES)
    if objective.startswith("ema_") and not base.ema.enabled:
        raise ConfigError(f"sweep.objective = {objective!r} needs [ema] enabled = true in the config")
    derived = "maximize" if objective.endswith("accuracy") else "minimize"
    direction = _text(sweep, "direction", derived, DIRECTIONS)
    if direction != derived:  # each trial's value is its best epoch: the other way round, its worst
        raise ConfigError(f"sweep.direction = {direction!r} contradicts sweep.objective = {objective!r}, which is "
                          f"better {'higher' if derived == 'maximize' else 'lower'}; leave direction out")
    if pruner == "early_stopping" and base.early_stopping.criterion == "none":
        raise ConfigError(
            'sweep.pruner = "early_stopping" prunes the trials that the config\'s early-stopping rule stops, but '
            '[early_stopping] criterion is "none"; set one (e.g. criterion = "patience" with a baseline, or "gl")'
        )
    seed = _integer(sweep, "seed", 0, minimum=0)
    workers = _integer(sweep, "workers", 1, minimum=1)
    storage = sweep.get("storage")
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise ConfigError(f"sweep.storage = {storage!r} is not a database URL; use e.g. \"sqlite:///study.db\" or "
                          "\"postgresql://user@host/db\" (default: sqlite:///<out>/study.db)")
    study_name = sweep.get("study_name", "sweep")
    if not isinstance(study_name, str) or not study_name.strip():
        raise ConfigError(f"sweep.study_name must be a non-empty string, got {study_name!r}")

    raw = sweep.get("params")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("[sweep.params] is missing or empty; add one entry per config key to search, e.g. "
                          '"optimizer.lr" = {type = "float", low = 1e-4, high = 1e-2, log = true}')
    params = tuple(_param(key, value, sampler, base) for key, value in raw.items())
    _check_combinations(base, params, objective)

    size = math.prod(len(p.choices) for p in params) if sampler == "grid" else None
    trials = _integer(sweep, "trials", size if size is not None else DEFAULT_TRIALS, minimum=1)
    if size is not None and trials > size:
        raise ConfigError(f"sweep.trials = {trials} but the grid has only {size} points; "
                          f"leave trials out to run the whole grid")
    if workers > trials:  # each worker runs whole trials: the others would only start, load the data and leave
        raise ConfigError(f"sweep.workers = {workers} but the sweep has {trials} trial(s); use at most {trials}")
    cores = os.cpu_count() or 1
    if workers > cores:  # each worker is a training process: more than the cores only slows every trial down
        raise ConfigError(f"sweep.workers = {workers} but this machine has {cores} CPU core(s); use at most {cores}")
    return SweepSpec(
        base=base, params=params, sampler=sampler, trials=trials, objective=objective, direction=direction,
        pruner=pruner, storage=storage, study_name=study_name.strip(), seed=seed, workers=workers,
        overrides=tuple(overrides), data_dir=data_dir,
    )


def _text(table: dict[str, Any], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = table.get(key, default)
    if value not in choices:
        raise ConfigError(f"sweep.{key} = {value!r} is not valid; choose one of: {', '.join(choices)}")
    return value


def _integer(table: dict[str, Any], key: str, default: int, minimum: int) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"sweep.{key} must be an integer of {minimum} or more, got {value!r}")
    return value


def _number(where: str, spec: dict[str, Any], key: str, integer: bool) -> float:
    if key not in spec:
        raise ConfigError(f"{where} needs {key}")
    value = spec[key]
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{where}: {key} must be {'an integer' if integer else 'a finite number'}, got {value!r}")
    return value


# Keys whose trials would be ranked on other validation images (or another task), where no value compares.
_NOT_SEARCHABLE = {
    "data.dataset": "a sweep ranks its trials on one dataset's validation images; sweep each dataset on its own",
    "data.val_size": "each value validates on other images, so the trials' objectives would not compare",
    "data.split_seed": "each value validates on other images, so the trials' objectives would not compare",
}


def _param(key: str, spec: Any, sampler: str, base: Config) -> Param:
    where = f'sweep.params."{key}"'
    if key in _NOT_SEARCHABLE:
        raise ConfigError(f"{where} cannot be searched: {_NOT_SEARCHABLE[key]}")
    if isinstance(spec, list):  # a plain list: the values to try, for any sampler
        spec = {"type": "categorical", "choices": spec}
    elif sampler == "grid":
        if not (isinstance(spec, dict) and spec.get("type") == "categorical"):
            raise ConfigError(f"{where}: the grid sampler needs a list of values (e.g. [0.001, 0.01]), got {spec!r}")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a list of values or a table such as "
                          f"{{type = \"float\", low = 0.0001, high = 0.01, log = true}}, got {spec!r}")
    kind = spec.get("type")
    if kind is None and "." not in key and spec:
        # `optimizer.lr = [...]` unquoted: TOML reads it as a table `optimizer` holding `lr`
        inner = next(iter(spec))
        raise ConfigError(f'{where} is a table, not a parameter: a dotted key needs quotes in TOML, as in '
                          f'"{key}.{inner}" = ... (unquoted, {key}.{inner} is a key {inner} in a table {key})')
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{where}: type = {kind!r} is not valid; choose one of: {', '.join(PARAM_TYPES)}")
    allowed = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
               "categorical": {"type", "choices"}}[kind]
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)} for type {kind}; valid keys: "
                          f"{', '.join(sorted(allowed))}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, got {choices!r}")
        # 1 and 1.0 are one value to the config (a float field takes both): the same point twice
        same = [float(c) if isinstance(c, (int, float)) and not isinstance(c, bool) else repr(_label(c))
                for c in choices]
        if len(set(same)) != len(same):
            raise ConfigError(f"{where}: choices repeat a value: {choices}")
        param = Param(key, "categorical", choices=tuple(choices))
        values = list(choices)
    else:
        integer = kind == "int"
        low, high = _number(where, spec, "low", integer), _number(where, spec, "high", integer)
        if low >= high:
            raise ConfigError(f"{where}: low must be below high, got low = {low} and high = {high}")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{where}: log must be true or false, got {log!r}")
        if log and low <= 0:
            raise ConfigError(f"{where}: log = true needs low > 0, got low = {low}")
        step = spec.get("step")
        if step is not None:
            step = _number(where, spec, "step", integer)
            if step <= 0:
                raise ConfigError(f"{where}: step must be greater than zero, got {step}")
            if log:
                raise ConfigError(f"{where}: step and log = true cannot be combined (Optuna samples either on a "
                                  "grid or in log space)")
        param = Param(key, kind, low=low, high=high, step=step, log=log)
        # A float parameter's samples are floats even where the file's bounds are whole numbers.
        values = [low, high] if integer else [float(low), float(high)]
    for value in values:  # wrong keys and types fail now, with the config's own message
        try:
            _known_model(apply_overrides(base, {key: value}), "")
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    return param


def _known_model(cfg: Config, where: str) -> None:
    """An unknown model name, or an option the model does not take, fails when the file loads, as for
    `train`, not in every trial."""
    from ..models import check_options_taken

    try:
        check_options_taken(cfg.model.name, cfg.model.options())  # build_model's check, without building
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


_MAX_COMBINATIONS = 10_000  # checked one by one when the file loads (no model is built: milliseconds each)


def _check_combinations(base: Config, params: tuple[Param, ...], objective: str) -> None:
    """Every combination of the listed values makes a valid config: a model option only some models take,
    or an ``ema_*`` objective with ``ema.enabled`` swept to false, fails now, not trial by trial. Ranges
    (float, int) are checked at their bounds only, by ``_param``."""
    listed = [p for p in params if p.type == "categorical"]
    if not listed or math.prod(len(p.choices) for p in listed) > _MAX_COMBINATIONS:
        return
    for combo in itertools.product(*(p.choices for p in listed)):
        values = {p.key: value for p, value in zip(listed, combo)}
        try:
            cfg = apply_overrides(base, values)
            _known_model(cfg, "")
        except ConfigError as e:
            raise ConfigError(f"[sweep.params] with {_describe(values)}: {e}") from None
        if objective.startswith("ema_") and not cfg.ema.enabled:
            raise ConfigError(f"[sweep.params] with {_describe(values)}: sweep.objective = {objective!r} needs "
                              "[ema] enabled = true, and this point switches it off")


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v!r}" for k, v in values.items())


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of the params' values (Optuna labels), in file order; the grid sampler runs them in turn."""
    keys = [p.key for p in spec.params]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(p.labels() for p in spec.params))]


def apply_params(spec: SweepSpec, labels: dict[str, Any]) -> Config:
    """The base config with one trial's parameter values (Optuna labels) applied."""
    return apply_overrides(spec.base, {key: spec.param(key).value_of(v) for key, v in labels.items()})


def fingerprint(spec: SweepSpec) -> dict[str, Any]:
    """What makes two sweeps the same study: trials of different searches must not be mixed in one study.

    Where data lives and the trial count are left out: a rerun may point elsewhere or ask for more trials.
    """
    from ..config import config_to_dict

    base = config_to_dict(spec.base)
    base["data"].pop("dir")
    base["train"].pop("progress")
    base["train"].pop("report")  # what each trial writes besides its results, as progress is what it shows
    params = [{"key": p.key, "type": p.type, "low": p.low, "high": p.high, "step": p.step, "log": p.log,
               "choices": list(p.labels())} for p in spec.params]
    return json.loads(json.dumps({"base": base, "params": params, "sampler": spec.sampler,
                                  "objective": spec.objective, "direction": spec.direction, "pruner": spec.pruner}))
