"""Built-in evaluation datasets: GSM8K, MATH-500, MultiArith, HumanEval, and any JSONL.

Each dataset reads its file from the data directory, yields :class:`reason.Task` objects
with stable ids (``gsm8k/0``, ``HumanEval/0``) and references, and grades answers the way
its benchmark states them (see :mod:`reason.answers`).

Where a dataset's file is looked for: the ``data_dir`` option (``-o data_dir=DIR`` or
``reason eval --data-dir DIR``) or else ``$REASON_DATA_DIR``, and nowhere else when one
is given (a folder named on purpose is not silently replaced by another); otherwise
``../shared/data`` relative to the current directory or to the repository that holds the
package (a source checkout), then the user cache (``$REASON_CACHE_DIR/data`` or the
platform's cache folder). A dataset found in none of them is fetched from the Hugging
Face hub with the ``datasets`` library where it has a hub source (GSM8K, MATH-500,
HumanEval) and written to the user cache, so it is fetched once; offline, or without
``datasets``, one line says where to put the file.

Any JSONL file is a dataset too: ``reason eval --dataset problems.jsonl
--question-field q --answer-field a`` (options ``question_field``, ``answer_field``).
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import attrs

import reason
from reason import Config, Dataset, Task, hookimpl
from reason.answers import asks_for_percent, is_equivalent
from reason.errors import UsageError
from reason.log import get_logger
from reason.options import Option

from .verifiers.sandbox import SandboxOptions

DATA_DIR_ENV = "REASON_DATA_DIR"
DATA_DIR_OPTION = "data_dir"


class DataOptions(reason.Options):
    """The options of every dataset stored as a file."""

    data_dir = Option(str, None, help="folder holding the datasets [$REASON_DATA_DIR, ../shared/data, the user cache]")


log = get_logger()


@attrs.frozen
class HubSource:
    """Where the Hugging Face hub has a dataset: ``datasets.load_dataset(path, name,
    split=split, **kwargs)``, each record made into the JSONL record this project reads
    by ``convert`` (None: the same fields)."""

    path: str
    split: str
    name: str | None = None
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    convert: Any = None


def user_data_dir() -> Path:
    """The per-user folder that datasets fetched from the hub are written to."""
    from reason.plugins.backends.models import cache_root

    return cache_root() / "data"


def _repository_root() -> Path | None:
    """The checkout holding the package, when it runs from source (``core/`` of the repo)."""
    import reason

    package = Path(reason.__file__).resolve().parent
    if package.name == "core" and (package.parent / "pyproject.toml").exists():
        return package.parent
    return None


def data_dir_candidates(explicit: str | None = None) -> list[tuple[Path, str]]:
    """Where the data may be, in priority order, each with where that path came from
    (``explicit``: the ``data_dir`` option)."""
    if explicit:
        return [(Path(str(explicit)).expanduser(), f"option {DATA_DIR_OPTION}")]
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return [(Path(env).expanduser(), f"${DATA_DIR_ENV}")]
    found = [(Path.cwd() / ".." / "shared" / "data", "../shared/data from the current directory")]
    root = _repository_root()
    if root is not None:
        found.append((root.parent / "shared" / "data", "../shared/data from the repository"))
    found.append((user_data_dir(), "the user cache"))
    return found


def resolve_data_file(relative: str, dataset: str, data_dir: str | None = None, hub: HubSource | None = None) -> Path:
    """The dataset file ``relative`` under the data directory; else, unless a folder was
    named on purpose, fetched from ``hub`` into the user cache; else a :class:`UsageError`
    naming every path tried and how to point at the data."""
    tried = []
    candidates = data_dir_candidates(data_dir)
    for directory, origin in candidates:
        path = (directory / relative).resolve() if directory.exists() else directory / relative
        if path.is_file():
            return path
        tried.append(f"{path} ({origin})")
    where = f"--data-dir DIR (-o {DATA_DIR_OPTION}=DIR) or ${DATA_DIR_ENV}=DIR"
    if hub is None or candidates[-1][1] != "the user cache":  # none known, or a folder named on purpose
        raise UsageError(
            f"dataset {dataset!r}: data file not found; tried {'; '.join(tried)}. "
            f"Point at the folder that holds {relative} with {where}."
        )
    target = user_data_dir() / relative
    try:
        return fetch_from_hub(hub, target)
    except _NotFetched as exc:
        raise UsageError(
            f"dataset {dataset!r}: not found locally (tried {'; '.join(tried)}) and not fetched from the hub "
            f"({hub.path}: {exc}). Put the file at {target}, or point at a folder that holds {relative} with {where}."
        ) from None


class _NotFetched(Exception):
    """Why a dataset could not be fetched from the hub (one line)."""


def fetch_from_hub(hub: HubSource, target: Path) -> Path:
    """Load ``hub`` with the ``datasets`` library and write it to ``target`` as JSONL
    (gzipped for ``.gz``), whole or not at all."""
    try:
        import datasets
    except ImportError:
        raise _NotFetched("the datasets library is not installed (pip install datasets)") from None
    log.info("fetching a dataset from the hub once", source=hub.path, split=hub.split, to=str(target))
    try:
        rows = datasets.load_dataset(hub.path, hub.name, split=hub.split, **hub.kwargs)
    except Exception as exc:  # offline, unknown id, no access: the message says which
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _NotFetched(f"{type(exc).__name__}: {first}"[:300]) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        opener = gzip.open if target.suffix == ".gz" else open
        with opener(tmp, "wt", encoding="utf-8") as out:
            for row in rows:
                record = hub.convert(row) if hub.convert is not None else dict(row)
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file (``.gz`` too); a bad line is an error naming its number."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}:{number} is not valid JSON: {exc.msg}") from None
            if not isinstance(record, dict):
                raise UsageError(f"{path}:{number} is not a JSON object")
            yield record


class FileDataset(Dataset):
    """A dataset stored as one JSONL file under the data directory."""

    name = "dataset"
    relative_path = ""
    hub: HubSource | None = None
    """Where the hub has it, for a user without the file (None: nowhere known)."""
    Options: ClassVar[type[reason.Options]] = DataOptions
    options: DataOptions

    @property
    def path(self) -> Path:
        return resolve_data_file(self.relative_path, self.name, self.options.data_dir, self.hub)

    def records(self) -> Iterator[dict[str, Any]]:
        return read_jsonl(self.path)

    def load(self) -> Iterable[Task]:
        for index, record in enumerate(self.records()):
            yield self.task(index, record)

    def task(self, index: int, record: dict[str, Any]) -> Task:
        raise NotImplementedError


def gsm8k_reference(solution: str) -> str:
    """The final answer of a GSM8K worked solution: the number after ``#### ``, without
    thousands separators."""
    _, sep, tail = solution.rpartition("####")
    value = (tail if sep else solution).strip()
    return value.replace(",", "")


class NumericAnswers:
    """Grading for datasets whose references are numbers: numbers compare as numbers, and
    a plain fraction (``0.1``) matches a percentage reference (``10``) only when the
    question asks for a percentage (see :func:`reason.answers.is_equivalent`)."""

    def is_correct(self, task: Task, answer: str | None, **extra: Any) -> bool:
        return is_equivalent(answer, task.reference, percent=asks_for_percent(task.question))


class GSM8K(NumericAnswers, FileDataset):
    """GSM8K test (1319 grade-school word problems); the answer follows ``#### ``."""

    name = "gsm8k"
    relative_path = "gsm8k/test.jsonl"
    hub = HubSource("openai/gsm8k", "test", name="main")

    def task(self, index: int, record: dict[str, Any]) -> Task:
        return Task(
            question=record["question"],
            id=f"gsm8k/{index}",
            reference=gsm8k_reference(record["answer"]),
            metadata={"solution": record["answer"]},
        )


class GSM8KTrain(GSM8K):
    """GSM8K train (7473 problems): for training and calibrating learned components
    (``reason learn``), never for reporting accuracy. Ids ``gsm8k-train/N``."""

    name = "gsm8k-train"
    relative_path = "gsm8k/train.jsonl"
    hub = HubSource("openai/gsm8k", "train", name="main")

    def task(self, index: int, record: dict[str, Any]) -> Task:
        return attrs.evolve(super().task(index, record), id=f"gsm8k-train/{index}")


class MultiArith(NumericAnswers, FileDataset):
    """MultiArith (MAWPS): one- and two-step arithmetic word problems, numeric answers."""

    name = "multiarith"
    relative_path = "multiarith/test.jsonl"

    def task(self, index: int, record: dict[str, Any]) -> Task:
        return Task(question=record["input"], id=f"multiarith/{index}", reference=_number_text(record["target"]))


class Math500(FileDataset):
    """MATH-500: competition problems with LaTeX answers, graded with math-verify (the
    default :meth:`reason.Dataset.is_correct`)."""

    name = "math500"
    relative_path = "math500/test.jsonl"
    hub = HubSource("HuggingFaceH4/MATH-500", "test")

    def task(self, index: int, record: dict[str, Any]) -> Task:
        return Task(
            question=record["problem"],
            id=f"math500/{index}",
            reference=record["answer"],
            metadata={
                "unique_id": record.get("unique_id"),
                "subject": record.get("subject"),
                "level": record.get("level"),
                "solution": record.get("solution"),
            },
        )


class HumanEval(FileDataset):
    """HumanEval: 164 Python functions to complete.

    Each task carries two sets of tests. ``public_tests``: the examples in the prompt's
    docstring as asserts (:mod:`reason.plugins.public_tests`; 156 of the 164 prompts have
    some), what a user has and what the ``sandbox`` verifier runs. ``test``: HumanEval's
    hidden tests, which only grading runs (in the Docker sandbox, through
    :class:`reason.plugins.verifiers.sandbox.HiddenTestGrader`; ``-o grading_verifier=NAME``
    grades by that verifier's verdict instead)."""

    name = "humaneval"
    relative_path = "humaneval/HumanEval.jsonl.gz"
    hub = HubSource("openai/openai_humaneval", "test")

    class Options(DataOptions, SandboxOptions):  # the sandbox's: the hidden-test grader's
        grading_verifier = Option(str, None, help="grade by this verifier's verdict instead of the hidden tests")

    options: Options

    def __init__(self, config: Config, arg: str | None = None, **kwargs: Any) -> None:
        super().__init__(config, arg, **kwargs)
        self._grader: Any = None

    def task(self, index: int, record: dict[str, Any]) -> Task:
        from .public_tests import public_test_sources

        return Task(
            question=record["prompt"],
            id=record["task_id"],
            kind="code",
            reference=record["canonical_solution"],
            metadata={
                "prompt": record["prompt"],
                "test": record["test"],
                "entry_point": record["entry_point"],
                "public_tests": public_test_sources(record["prompt"], record["entry_point"]),
            },
        )

    @property
    def grader(self) -> Any:
        """Grades with the hidden tests (or with ``-o grading_verifier=NAME``'s verdict)."""
        if self._grader is None:
            chosen = self.options.grading_verifier
            if chosen:
                from reason.eval.grading import CodeGrader

                self._grader = CodeGrader(self.config, str(chosen))
            else:
                from .verifiers.sandbox import HiddenTestGrader

                self._grader = HiddenTestGrader(self.config, self.options)
        return self._grader

    def is_correct(self, task: Task, answer: str | None, **extra: Any) -> bool:
        return self.grade(task, [answer])[0]

    def grade(self, task: Task, answers: list[str | None]) -> list[bool]:
        """Grade many programs for one task in one sandbox call."""
        return self.grader.grade(task, answers)

    def close(self) -> None:
        if self._grader is not None:
            self._grader.close()


QUESTION_FIELDS = ("question", "problem", "input", "prompt")
ANSWER_FIELDS = ("answer", "target", "reference", "solution", "output")


class JsonlDataset(NumericAnswers, Dataset):
    """Any JSONL file: ``jsonl:PATH`` (``reason eval --dataset PATH.jsonl``).

    Fields come from the options ``question_field`` / ``answer_field``, else the first of
    the usual names present. Ids are ``<file stem>/<index>``, or the ``id_field`` option's
    value. A reference holding a worked solution is reduced to its final answer (after
    ``#### `` or in the last ``\\boxed{}``). Grading is math-aware (see
    :func:`reason.answers.is_equivalent`)."""

    class Options(reason.Options):
        dataset_path = Option(str, None, help="the JSONL file [jsonl:PATH, --dataset PATH.jsonl]")
        question_field = Option(str, None, help="the field with the question [question|problem|input|prompt]")
        answer_field = Option(str, None, help="the field with the reference answer [answer|target|reference|solution|output]")
        id_field = Option(str, None, help="the field with the task id [FILE/INDEX]")

    options: Options

    def __init__(self, config: Config, arg: str | None = None, **kwargs: Any) -> None:
        super().__init__(config, arg, **kwargs)
        path = arg or self.options.dataset_path
        if not path:
            raise UsageError("the jsonl dataset needs a file: --dataset PATH.jsonl (or jsonl:PATH)")
        self.path = Path(path).expanduser()
        self.name = self.path.name.removesuffix(".gz").removesuffix(".jsonl")

    def _field(self, record: dict[str, Any], option: str, usual: tuple[str, ...], flag: str, required: bool) -> str | None:
        chosen = getattr(self.options, option)
        if chosen:
            if chosen not in record:
                raise UsageError(f"{self.path}: no field {chosen!r} (from {flag}); the records have: {', '.join(record)}")
            return str(chosen)
        for name in usual:
            if name in record:
                return name
        if required:
            raise UsageError(
                f"{self.path}: cannot tell which field holds the {option.split('_')[0]}; "
                f"pass {flag} NAME (fields: {', '.join(record)})"
            )
        return None

    def load(self) -> Iterable[Task]:
        if not self.path.is_file():
            raise UsageError(f"dataset file {self.path} does not exist (--dataset PATH.jsonl)")
        id_field = self.options.id_field
        question_field = answer_field = None
        for index, record in enumerate(read_jsonl(self.path)):
            if question_field is None:
                question_field = self._field(record, "question_field", QUESTION_FIELDS, "--question-field", True)
                answer_field = self._field(record, "answer_field", ANSWER_FIELDS, "--answer-field", False)
            if question_field not in record:
                raise UsageError(f"{self.path}: record {index} has no field {question_field!r}")
            raw = record.get(answer_field) if answer_field else None
            yield Task(
                question=str(record[question_field]),
                id=str(record[id_field]) if id_field and id_field in record else f"{self.name}/{index}",
                reference=_final_answer(raw) if raw is not None else None,
                metadata={k: v for k, v in record.items() if k not in (question_field, answer_field)},
            )


def _number_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _final_answer(value: Any) -> str:
    """A reference as the final answer alone (worked solutions end in ``#### N`` or a box)."""
    if not isinstance(value, str):
        return _number_text(value)
    if "####" in value:
        return gsm8k_reference(value)
    from reason.answers import _last_boxed

    boxed = _last_boxed(value)
    return boxed if boxed else value.strip()


DATASETS: dict[str, type[Dataset]] = {
    "gsm8k": GSM8K,
    "gsm8k-train": GSM8KTrain,
    "math500": Math500,
    "multiarith": MultiArith,
    "humaneval": HumanEval,
    "jsonl": JsonlDataset,
}


@hookimpl
def reason_register_datasets(register):
    for name, factory in DATASETS.items():
        register(name, factory)
