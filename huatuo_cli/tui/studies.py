"""The study / series tree: PHI-free keys, modality, body part and image count.

Patient names are read (headers only) and shown only after the reader presses the reveal key,
only on screen: never in a notification, the audit trail, an export or a log.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from huatuo_cli.imaging import ScanResult, Series, Study
from huatuo_cli.imaging.dicomio import read_dicom

#: what a node carries: a study, or (study, series)
NodeData = Study | tuple[Study, Series]


def study_label(study: Study, name: str | None = None) -> Text:
    modalities = sorted({s.modality for s in study.series if s.modality}) or ["image"]
    label = Text.assemble(("study ", "dim"), (study.key, "bold"), f" {'/'.join(modalities)}")
    if name:
        label.append(f"  {name}", style="italic yellow")
    return label


def series_label(series: Series) -> Text:
    number = f"#{series.number}" if series.number is not None else "#-"
    images = series.number_of_frames
    parts = [series.modality or "image", series.body_part or "-", f"{images} image{'s' if images != 1 else ''}"]
    return Text.assemble((number, "bold"), " ", " · ".join(parts))


def patient_name(study: Study) -> str:
    """PatientName of the study's first DICOM file (headers only); '' for plain images or none."""
    if study.kind != "dicom" or not study.series or not study.series[0].instances:
        return ""
    try:
        dataset = read_dicom(study.series[0].instances[0].path, headers_only=True)
    except Exception:  # noqa: BLE001 - an unreadable header hides the name, it does not stop the app
        return ""
    return str(dataset.get("PatientName", "") or "").replace("^", " ").strip()


class StudyTree(Tree[NodeData]):
    """Studies (expanded) with their series; highlighting a series shows it, Enter moves to the chat."""

    DEFAULT_CSS = """
    StudyTree { width: 34; border: round $primary; }
    """

    def __init__(self) -> None:
        super().__init__("studies", id="studies")
        self.show_root = False
        self.border_title = "Studies"
        self.names_shown = False

    def show(self, result: ScanResult) -> None:
        """Fill the tree from a scan (called on the UI thread)."""
        self.clear()
        for study in result.studies:
            node = self.root.add(study_label(study), data=study, expand=True)
            for series in study.series:
                node.add_leaf(series_label(series), data=(study, series))
        self.border_subtitle = f"{len(result.studies)} studies, {len(result.series)} series"
        if result.studies:
            self.move_cursor_to_line(1 if result.studies[0].series else 0)

    def reveal(self, names: dict[str, str] | None) -> None:
        """Show patient names (study key -> name) next to the study keys; None hides them."""
        self.names_shown = names is not None
        names = names or {}
        for node in self.root.children:
            study = node.data
            if isinstance(study, Study):
                node.set_label(study_label(study, names.get(study.key)))

    def studies(self) -> list[Study]:
        return [n.data for n in self.root.children if isinstance(n.data, Study)]


def series_of(node: TreeNode[NodeData]) -> tuple[Study, Series] | None:
    """The (study, series) a node stands for: a series node, or a study's first series."""
    data = node.data
    if isinstance(data, tuple):
        return data
    if isinstance(data, Study) and data.series:
        return data, data.series[0]
    return None
