import pytest

from emu_video import cli


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The tiny random model set (`emu-video init-models`), written once per test session."""
    folder = tmp_path_factory.getbasetemp() / "emu_tiny_models"
    if not (folder / cli.MANIFEST).exists():
        cli.init_models(folder)
    return folder
