import pytest
import torch

from emu_video import cli

# Every test model is tiny: a second OpenMP thread only adds spin-waiting, most of all on a shared
# 2-core CI machine. One setting for the whole session (collection imports every test module first).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The tiny random model set (`emu-video init-models`), written once per test session."""
    folder = tmp_path_factory.getbasetemp() / "emu_tiny_models"
    if not (folder / cli.MANIFEST).exists():
        cli.init_models(folder)
    return folder
