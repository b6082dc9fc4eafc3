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
import shlex
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Collection

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .. import machine
from ..config import SEED_LIMIT, Config, apply_overrides, config_from_dict, parse_overrides
from ..errors import ConfigError

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "hyperband", "early_stopping")
DIRECTIONS = ("maximize", "minimize")
PARAM_TYPES = ("float", "int", "categorical")
# Selection happens on the validation split only; the test split stays unseen until a trial's final test.
OBJECTIVES = ("val_accuracy", "val_loss", "val_error", "ema_val_accuracy", "ema_val_loss")
DEFAULT_TRIALS = 20  # tpe / random when [sweep] gives no count (fewer where the params take fewer combinations)


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

    def size(self) -> int | None:
        """How many values the dimension takes; None for a float range without a step (endless)."""
        if self.type == "categorical":
            return len(self.choices)
        if self.type == "float" and self.step is None:
            return None
        return int((_decimal(self.high) - _decimal(self.low)) / _decimal(self.step or 1)) + 1

    def label_at(self, index: int) -> Any:
        """The index-th value of a finite dimension (``size()`` of them), as Optuna gives it (see :meth:`labels`)."""
        if self.type == "categorical":
            return self.labels()[index]
        if self.type == "int":
            return int(self.low) + index * int(self.step or 1)
        # in decimals, as Optuna checks the grid: the last value is high itself, not a hair above it
        return float(_decimal(self.low) + index * _decimal(self.step))

    def index_of(self, label: Any) -> int:
        """Where an Optuna value lies among a finite dimension's values (the inverse of :meth:`label_at`)."""
        if self.type == "categorical":
            return self.labels().index(label)
        # rounded: Optuna's stepped floats carry float error (0.30000000000000004 for the third of 0.1, 0.2, ...)
        return round((label - self.low) / (self.step or 1))

    def values_to_check(self) -> tuple[Any, ...]:
        """The values a check at load time tries: every listed one, or a range's low and high."""
        if self.type == "categorical":
            return self.choices
        # A float parameter's samples are floats even where the file's bounds are whole numbers.
        return (self.low, self.high) if self.type == "int" else (float(self.low), float(self.high))


def _label(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, tuple)) else value


def _decimal(x: float) -> Decimal:
    return Decimal(str(x))  # the number as written (0.1, not 0.1000000000000000055...), as Optuna reads a step


def space_size(params: tuple[Param, ...]) -> int | None:
    """How many distinct points the params span; None when a float range without a step makes them endless."""
    sizes = [p.size() for p in params]
    return None if None in sizes else math.prod(sizes)


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
    if not str(path).strip():  # Path("") is the current folder: "cannot read sweep file .: Is a directory"
        raise ConfigError("the sweep file's name is empty; give a TOML file (see configs/sweep-example.toml)")
    path = Path(path)
    if path.is_dir():  # as load_config says of a folder given as the config
        raise ConfigError(f"sweep file {path} is a folder, not a TOML file")
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
    given = {key: value for key, value in (("trials", trials), ("workers", workers), ("storage", storage))
             if value is not None}
    if isinstance(sweep, dict):
        sweep.setdefault("study_name", path.stem)
        sweep.update(given)
    try:
        spec = sweep_from_dict({**data, "sweep": sweep}, overrides=overrides, data_dir=data_dir, flags=set(given))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return replace(spec, source=path)


def sweep_from_dict(
    data: dict[str, Any], *, overrides: list[str] | tuple[str, ...] = (), data_dir: str | None = None,
    flags: Collection[str] = (),
) -> SweepSpec:
    """A SweepSpec from a parsed sweep file (a config dict with a ``sweep`` table).

    ``flags``: the [sweep] keys whose values came from the command line (``--trials``, ``--workers``,
    ``--storage``); messages about them name the flag the user typed, not the key it stands for.
    """
    data = dict(data)
    sweep = data.pop("sweep", None)
    if not isinstance(sweep, dict):
        raise ConfigError(f"[sweep] must be a table of keys, got {sweep!r}")
    base = config_from_dict(data)
    if data_dir is not None:
        base = apply_overrides(base, {"data.dir": data_dir})
    # [sweep] is the sweep file's, not a config section: apply_overrides said "unknown section 'sweep'" only
    given = parse_overrides(list(overrides))  # the keys --set names (checked against [sweep.params] below too)
    own = [key for key in given if key.split(".")[0] == "sweep"]
    if own:
        raise ConfigError(f"--set {own[0]}: --set changes the base config, not [sweep]; give --trials, --workers or "
                          "--storage for those, or edit the sweep file's [sweep] table")
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
    if seed >= SEED_LIMIT:  # else the sampler's traceback when the study opens, after the folder is made
        raise ConfigError(f"sweep.seed must be below 2**32 = {SEED_LIMIT} (Optuna's samplers take 32-bit seeds), "
                          f"got {seed}")
    workers = _integer(sweep, "workers", 1, minimum=1)
    storage = sweep.get("storage")
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise ConfigError(f"{_said('storage', storage, flags)} is not a database URL; use e.g. "
                          "\"sqlite:///study.db\" or \"postgresql://user@host/db\" (default: sqlite:///<out>/study.db)")
    if storage is not None and _in_memory(storage):
        # Each process would hold a study of its own, gone when it ends: workers would run the whole count each,
        # into the same trial folders, and the same command could not continue the sweep.
        raise ConfigError(f"{_said('storage', storage, flags)} is an in-memory database, which ends with the "
                          "process: workers could not share it and the sweep could not be continued; give a file "
                          "(\"sqlite:///study.db\") or leave storage out (default: sqlite:///<out>/study.db)")
    study_name = sweep.get("study_name", "sweep")
    if not isinstance(study_name, str) or not study_name.strip():
        raise ConfigError(f"sweep.study_name must be a non-empty string, got {study_name!r}")

    raw = sweep.get("params")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("[sweep.params] is missing or empty; add one entry per config key to search, e.g. "
                          '"optimizer.lr" = {type = "float", low = 1e-4, high = 1e-2, log = true}')
    params = tuple(_param(key, value, sampler, base) for key, value in raw.items())
    # A --set of a searched key was silently replaced by each trial's own value (--set optimizer.lr=0.01 trained
    # every lr but 0.01).
    searched = [key for key in given if key in raw]
    if searched:
        raise ConfigError(f"--set {searched[0]} sets a key that [sweep.params] searches, so each trial would "
                          f"replace its value; leave the --set out, or take \"{searched[0]}\" out of [sweep.params]")
    if objective.endswith("loss") and any(p.key == "train.label_smoothing" and p.size() != 1 for p in params):
        # val_loss is the loss with the trial's own smoothing: a perfect model scores about 0.5 at 0.1 and 0 at 0,
        # so the lowest smoothing always won, whatever it did to the predictions.
        raise ConfigError(f'sweep.params."train.label_smoothing" changes what {objective} measures (the loss on '
                          "the smoothed labels), so the trials' values would not compare; rank them with "
                          'sweep.objective = "val_accuracy" or "val_error"')
    _check_combinations(base, params, objective)

    # A finite space (lists, int ranges, float ranges with a step) has `size` distinct points, and no trial
    # repeats another's values (untried.py): by default the sweep tries each once, at most DEFAULT_TRIALS.
    size = space_size(params)
    default = DEFAULT_TRIALS if size is None else size if sampler == "grid" else min(size, DEFAULT_TRIALS)
    trials = _integer(sweep, "trials", default, minimum=1)
    if sampler == "grid" and trials > size:
        raise ConfigError(f"{_said('trials', trials, flags)} but the grid has only {size} points; "
                          f"leave {'--trials' if 'trials' in flags else 'trials'} out to run the whole grid")
    given = _said("workers", workers, flags)
    if workers > trials:  # each worker runs whole trials: the others would only start, load the data and leave
        raise ConfigError(f"{given} but the sweep has {trials} trial(s); use at most {trials}")
    cores = machine.usable_cores()
    if workers > cores:  # each worker is a training process: more than the cores only slows every trial down
        raise ConfigError(f"{given} but this machine has {cores} CPU core(s); use at most {cores}")
    return SweepSpec(
        base=base, params=params, sampler=sampler, trials=trials, objective=objective, direction=direction,
        pruner=pruner, storage=storage, study_name=study_name.strip(), seed=seed, workers=workers,
        overrides=tuple(overrides), data_dir=data_dir,
    )


def too_many_trials(spec: SweepSpec) -> str | None:
    """What to say when a finite space has fewer points than the trials asked for (tpe, random): no trial
    repeats another's values, so the sweep ends when each has been tried once. None when they fit."""
    size = space_size(spec.params)
    if size is None or spec.trials <= size:
        return None
    dims = " x ".join(f"{p.size()} {p.key}" for p in spec.params)
    grid = '; sampler = "grid" runs each of them in turn' if all(p.type == "categorical" for p in spec.params) else ""
    return (f"{spec.trials} trials asked for, but the params take only {size} distinct combinations ({dims}); no "
            f"trial repeats another's values, so the sweep ends after {size}{grid}")


def is_sqlite(url: str) -> bool:
    """``sqlite:`` with or without a driver (``sqlite+pysqlite:``): the spellings SQLAlchemy reads as SQLite."""
    return url.partition(":")[0].split("+")[0].lower() == "sqlite"


def _in_memory(url: str) -> bool:
    """Whether a database URL is SQLite in memory, as SQLAlchemy reads it: no file (``sqlite://``), ``:memory:``,
    or a ``mode=memory`` URI.

    >>> [_in_memory(u) for u in ("sqlite://", "sqlite:///:memory:", "sqlite:///study.db", "postgresql://h/db")]
    [True, True, False, False]
    """
    if not is_sqlite(url):
        return False
    path, _, query = url.partition("://")[2].partition("?")
    return path in ("", "/", "/:memory:") or "mode=memory" in query.lower()


def _said(key: str, value: Any, flags: Collection[str]) -> str:
    """A [sweep] key's value as the user gave it: ``--workers 3`` from the command line, ``sweep.workers = 3``
    from the file."""
    return f"--{key} {shlex.quote(str(value))}" if key in flags else f"sweep.{key} = {value!r}"


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
    # test-time augmentation acts on the final test only: every value trained the same trial again
    "tta.enabled": "it acts on the final test only, and trials are ranked on the validation split, where every "
                   "value scores the same",
    "tta.shift": "it acts on the final test only, and trials are ranked on the validation split, where every "
                 "value scores the same",
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
        given, choices = choices, [_none_word(base, key, c) for c in choices]
        # 1 and 1.0 are one value to the config (a float field takes both): the same point twice
        same = [float(c) if isinstance(c, (int, float)) and not isinstance(c, bool) else repr(_label(c))
                for c in choices]
        if len(set(same)) != len(same):
            raise ConfigError(f"{where}: choices repeat a value: {given}")
        param = Param(key, "categorical", choices=tuple(choices))
        values = list(param.values_to_check())
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
            _check_step(where, low, high, step)
        param = Param(key, kind, low=low, high=high, step=step, log=log)
        values = list(param.values_to_check())
    for value in values:  # wrong keys and types fail now, with the config's own message
        try:
            _known_model(apply_overrides(base, {key: value}), "")
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    if param.type == "float" and param.step is None and param.low < param.high:
        # A key valid at its bounds but not between (mixup.alpha: 0 is off, and 0 < alpha < 0.001 is refused):
        # the draws next to a bound would fail their trials one by one.
        for bound, inside in ((param.low, math.nextafter(param.low, param.high)),
                              (param.high, math.nextafter(param.high, param.low))):
            try:
                apply_overrides(base, {key: inside})
            except ConfigError as e:
                raise ConfigError(f"{where}: a draw next to {bound:g} ({inside:g}) is refused ({e}); give a range "
                                  "whose every value is valid, or list the values to try") from None
    return param


def _none_word(base: Config, key: str, choice: Any) -> Any:
    """The word "none" in a list of values: unset (None) for an optional key, as ``--set key=none`` reads it.
    TOML has no null, so ``"train.grad_clip" = ["none", 1.0]`` is how a file lists "off" beside a value; a key
    with "none" as a choice of its own (early_stopping.criterion) keeps the word."""
    if not (isinstance(choice, str) and choice.lower() in ("none", "null")):
        return choice
    try:
        cfg = apply_overrides(base, {key: None})  # a key with the word as a choice gets the word back
    except ConfigError:
        return choice  # not optional: the word, refused below with the config's own message
    section, _, name = key.partition(".")
    return None if getattr(getattr(cfg, section), name) is None else choice


def _check_step(where: str, low: float, high: float, step: float) -> None:
    """Refuse a step that does not divide high - low: Optuna would end the range at the last step below high,
    never trying high itself, with a warning on every trial. Computed in decimals, as Optuna checks it."""
    span = _decimal(high) - _decimal(low)
    try:
        rest = span % _decimal(step)
    except InvalidOperation:  # more steps than decimal's 28 digits hold: a traceback (DivisionImpossible) before
        raise ConfigError(f"{where}: the range {low} to {high} in steps of {step} holds more than 10**28 values; "
                          "give a larger step or a narrower range") from None
    if rest == 0:
        return
    steps = span // _decimal(step)
    number = int if isinstance(step, int) and isinstance(low, int) else float
    below, above = (number(_decimal(low) + n * _decimal(step)) for n in (steps, steps + 1))
    fits = f"high = {below} or {above}" if below > low else f"high = {above}"
    raise ConfigError(f"{where}: step = {step} does not divide high - low = {high} - {low} = {span}, so high = {high} "
                      f"would never be tried (the values stop at {below}); set {fits}")


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
    """Every combination of the listed values, with each range at its low and at its high, makes a valid
    config: a model option only some models take (a listed lenet with a stride range), nesterov swept on
    with a momentum range from 0, or an ``ema_*`` objective with ``ema.enabled`` swept to false, fails now,
    not trial by trial. Above _MAX_COMBINATIONS, only each value alone is checked (by ``_param``)."""
    if math.prod(len(p.values_to_check()) for p in params) > _MAX_COMBINATIONS:
        return
    for combo in itertools.product(*(p.values_to_check() for p in params)):
        values = dict(zip((p.key for p in params), combo))
        try:
            cfg = apply_overrides(base, values)
            _known_model(cfg, "")
        except ConfigError as e:
            raise ConfigError(f"[sweep.params] with {_describe(params, combo)}: {e}") from None
        if objective.startswith("ema_") and not cfg.ema.enabled:
            raise ConfigError(f"[sweep.params] with {_describe(params, combo)}: sweep.objective = {objective!r} needs "
                              "[ema] enabled = true, and this point switches it off")


def _describe(params: tuple[Param, ...], combo: tuple[Any, ...]) -> str:
    """``model.name = 'lenet', model.stride = 1 (its low)``: a range's value is one of its bounds."""
    def one(p: Param, value: Any) -> str:
        bound = "" if p.type == "categorical" else " (its low)" if value == p.low else " (its high)"
        return f"{p.key} = {value!r}{bound}"

    return ", ".join(one(p, value) for p, value in zip(params, combo))


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of the params' values (Optuna labels), in file order; the grid sampler runs them in turn."""
    keys = [p.key for p in spec.params]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(p.labels() for p in spec.params))]


def point_key(spec: SweepSpec, labels: dict[str, Any]) -> tuple[int, ...] | None:
    """A point of a finite space as the index of each value among its parameter's values (stepped floats
    compare despite float error); None for a trial that does not hold every parameter (it died drawing them)."""
    if any(p.key not in labels for p in spec.params):
        return None
    return tuple(p.index_of(labels[p.key]) for p in spec.params)


def apply_params(spec: SweepSpec, labels: dict[str, Any]) -> Config:
    """The base config with one trial's parameter values (Optuna labels) applied."""
    return apply_overrides(spec.base, {key: spec.param(key).value_of(v) for key, v in labels.items()})


# Config keys a rerun may change and still be the same search: where the data is read from, what each trial shows
# (progress) and writes besides its results (report), and how many threads it computes with (a rerun on another
# machine, or with more workers, sets its own; the numbers differ only by rounding, as between two machines).
_NOT_THE_SEARCH = (("data", "dir"), ("train", "progress"), ("train", "report"), ("train", "threads"))


def fingerprint(spec: SweepSpec) -> dict[str, Any]:
    """What makes two sweeps the same study: trials of different searches must not be mixed in one study.

    The keys in _NOT_THE_SEARCH and the trial count are left out: a rerun may read the data from elsewhere, on
    another machine, or ask for more trials.
    """
    from ..config import config_to_dict

    base = config_to_dict(spec.base)
    for section, key in _NOT_THE_SEARCH:
        base[section].pop(key)
    params = [{"key": p.key, "type": p.type, "low": p.low, "high": p.high, "step": p.step, "log": p.log,
               "choices": list(p.labels())} for p in spec.params]
    return json.loads(json.dumps({"base": base, "params": params, "sampler": spec.sampler,
                                  "objective": spec.objective, "direction": spec.direction, "pruner": spec.pruner}))


def fingerprint_changes(mine: dict[str, Any], stored: dict[str, Any]) -> list[str]:
    """The parts of a study's stored ``fingerprint`` that this sweep's differs in (none: the same sweep).

    A config key added to mnistlab after the study began (``train.max_steps``, say) is not in the stored base;
    at its default it trains what the older version trained, so it does not make the sweep another. The params
    compare by key: the order of the lines in [sweep.params] changes no trial.
    """
    return sorted({part for part, _ in _differences(mine, stored)})


def describe_changes(mine: dict[str, Any], stored: dict[str, Any], most: int = 6) -> str:
    """What differs from the study's stored ``fingerprint``, key by key, for the refusal to say what to restore:
    ``train.batch_size = 32 (the study's: 256); sweep.sampler = "tpe" (the study's: "grid")``."""
    details = [detail for _, detail in _differences(mine, stored)]
    more = f"; and {len(details) - most} more" if len(details) > most else ""
    return "; ".join(details[:most]) + more


def _differences(mine: dict[str, Any], stored: dict[str, Any]) -> list[tuple[str, str]]:
    """(part, what differs in it) for each difference between two fingerprints."""
    from ..config import Config, config_to_dict

    found: list[tuple[str, str]] = []
    defaults, base = json.loads(json.dumps(config_to_dict(Config()))), mine["base"]
    old = stored.get("base")
    if isinstance(old, dict):
        # A study stored before a key joined _NOT_THE_SEARCH holds it: it is not compared either.
        old = {section: {key: value for key, value in keys.items() if (section, key) not in _NOT_THE_SEARCH}
               if isinstance(keys, dict) else keys for section, keys in old.items()}
        old = _unset_old_defaults(old, base, mine["params"])
        base = {section: {key: value for key, value in keys.items()
                          if key in (old.get(section) or {}) or value != defaults.get(section, {}).get(key)}
                for section, keys in base.items()}
        # A key that the study and this sweep both search is set by every trial, so the base's value of it is never
        # trained with: a sweep of optimizer.lr whose base lr changed (or whose base held momentum's old default,
        # 0.9) is the same search.
        searched = set(_by_key(mine["params"]) or {}) & set(_by_key(stored.get("params")) or {})
        for section in sorted(set(base) | set(old), key=str):
            now, then = base.get(section) or {}, old.get(section)
            then = then if isinstance(then, dict) else {}
            for key in sorted(set(now) | set(then), key=str):
                if f"{section}.{key}" in searched:
                    continue
                if now.get(key, _MISSING) != then.get(key, _MISSING):
                    found.append(("base", f"{section}.{key} = {_shown(now.get(key, _MISSING))} "
                                          f"(the study's: {_shown(then.get(key, _MISSING))})"))
    elif base != old:
        found.append(("base", "the base config (the study holds none)"))
    params, old_params = _by_key(mine["params"]), _by_key(stored.get("params"))
    if params != old_params:
        if old_params is None:
            found.append(("params", "[sweep.params] (the study holds none)"))
        else:
            for key in [*params, *(k for k in old_params if k not in params)]:
                now, then = params.get(key, _MISSING), old_params.get(key, _MISSING)
                if now != then:
                    found.append(("params", f'sweep.params."{key}" = {_shown_param(now)} '
                                            f"(the study's: {_shown_param(then)})"))
    for part in sorted(k for k in mine if k not in ("base", "params")):
        if mine[part] != stored.get(part):
            found.append((part, f"sweep.{part} = {_shown(mine[part])} (the study's: "
                                f"{_shown(stored.get(part, _MISSING))})"))
    return found


_MISSING = object()  # a key one side of a comparison does not hold


# Keys whose default was a number and is now unset (None), with that number: a study begun before the change
# stored the number. Unset now means the optimizer's or the criterion's own default (OPTIMIZER_DEFAULTS, GL_ALPHA,
# PQ_ALPHA), which for most of them is that same number.
_WAS_DEFAULT = {("optimizer", "momentum"): 0.9, ("optimizer", "eps"): 1e-8, ("optimizer", "weight_decay"): 0.0,
                ("early_stopping", "alpha"): 5.0}


def _unset_old_defaults(old: dict[str, Any], base: dict[str, Any], params: Any) -> dict[str, Any]:
    """A study's stored base with each of _WAS_DEFAULT's keys that holds its old default, where this sweep leaves
    the key unset and unset trains with that same value in every trial, unset as well: continuing a sweep begun
    with early_stopping.alpha = 5.0 (the default then) under GL, the same search, was refused as another.
    Where a trial would train otherwise (PQ's unset alpha is 0.5, AdamW's weight_decay 0.01) it still differs.

    >>> _unset_old_defaults({"early_stopping": {"criterion": "gl", "alpha": 5.0}},
    ...                     {"early_stopping": {"criterion": "gl", "alpha": None}}, [])["early_stopping"]
    {'criterion': 'gl', 'alpha': None}
    """
    from ..callbacks.early_stopping import GL_ALPHA, PQ_ALPHA
    from ..config import OPTIMIZER_DEFAULTS

    searched = _by_key(params) or {}
    unset_means = {"optimizer": lambda name, key: OPTIMIZER_DEFAULTS.get(name, {}).get(key, _MISSING),
                   "early_stopping": lambda name, key: {"gl": GL_ALPHA, "pq": PQ_ALPHA}.get(name, _MISSING)}
    chooser = {"optimizer": "name", "early_stopping": "criterion"}
    fixed = {section: dict(keys) if isinstance(keys, dict) else keys for section, keys in old.items()}
    for (section, key), was in _WAS_DEFAULT.items():
        then, now = fixed.get(section), base.get(section)
        if not isinstance(then, dict) or not isinstance(now, dict) or f"{section}.{key}" in searched:
            continue
        if now.get(key, _MISSING) is not None or then.get(key) != was:
            continue
        # Every optimizer (criterion) a trial may take, from the base or its searched choices, must either not
        # read the key (_MISSING) or take the old default when it is unset.
        which = f"{section}.{chooser[section]}"
        names = (searched[which].get("choices") or []) if which in searched else [now.get(chooser[section])]
        if names and all(unset_means[section](n, key) in (_MISSING, was) for n in names):
            then[key] = None
    return fixed


def _by_key(params: Any) -> dict[str, Any] | None:
    """A fingerprint's params as {key: the rest}; None for what is not a list of them (a damaged attribute)."""
    if not isinstance(params, list) or not all(isinstance(p, dict) and isinstance(p.get("key"), str) for p in params):
        return None
    return {p["key"]: {k: v for k, v in p.items() if k != "key"} for p in params}


def _shown(value: Any) -> str:
    """A fingerprint value as TOML writes it (none for None)."""
    if value is _MISSING:
        return "not set"
    return "none" if value is None else json.dumps(value)


def _shown_param(p: Any) -> str:
    """A fingerprint's param as the sweep file gives it: its list of values, or its range."""
    if p is _MISSING:
        return "not searched"
    if p.get("type") == "categorical":
        return json.dumps(p.get("choices"))
    # "is": a low of 0 is shown (0 == False); an unset step and log = false are not
    bounds = ", ".join(f"{k} = {_shown(p[k])}" for k in ("low", "high", "step", "log")
                       if p.get(k) is not None and p.get(k) is not False)
    return f'{{type = "{p.get("type")}", {bounds}}}'
