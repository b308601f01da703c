"""_manager/spawning.py: the main script's name, hidden from spawned children only where it names no file."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from reflectmgr._manager import spawning


def _main(monkeypatch: pytest.MonkeyPatch, file: str | None) -> types.ModuleType:
    main = types.ModuleType("__main__")
    if file is not None:
        main.__file__ = file
    monkeypatch.setitem(sys.modules, "__main__", main)
    return main


def test_a_name_that_is_no_file_is_hidden_while_a_child_is_spawned(monkeypatch: pytest.MonkeyPatch) -> None:
    main = _main(monkeypatch, "<stdin>")
    assert not spawning.main_runs_in_children()
    with spawning.main_file_hidden_if_unreadable():
        assert main.__file__ is None
        with spawning.main_file_hidden_if_unreadable():  # nested (one spawn inside another's): still hidden
            assert main.__file__ is None
        assert main.__file__ is None
    assert main.__file__ == "<stdin>"


def test_a_script_that_exists_and_no_file_at_all_are_left_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = tmp_path / "script.py"
    script.write_text("")
    main = _main(monkeypatch, str(script))
    assert spawning.main_runs_in_children()
    with spawning.main_file_hidden_if_unreadable():
        assert main.__file__ == str(script)
    main = _main(monkeypatch, None)  # python -c, the REPL
    assert not spawning.main_runs_in_children()
    with spawning.main_file_hidden_if_unreadable():
        assert not hasattr(main, "__file__")
    assert not hasattr(main, "__file__")


def test_the_name_comes_back_when_the_spawn_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    main = _main(monkeypatch, "<stdin>")
    with pytest.raises(OSError), spawning.main_file_hidden_if_unreadable():
        raise OSError("the spawn failed")
    assert main.__file__ == "<stdin>"


_SCRIPT = """
import os.path as osp, json
def top(): pass
class Top:
    def method(self): pass
try:
    def in_try(): pass
except ImportError:
    def in_handler(): pass
if osp:
    def in_if(): pass
def redefined(): pass
def rebound(): pass
def made_global(): pass
def local_there(): pass
if "__main__" == __name__:
    def guarded(): pass
    def redefined(): pass
    rebound = None
    def helper():
        global made_global
        local_there = 1
else:
    def in_else(): pass
"""


def test_what_a_child_finds_by_name_is_the_scripts_top_level_outside_its_main_block(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = tmp_path / "script.py"
    script.write_text(_SCRIPT)
    main = _main(monkeypatch, str(script))
    exec(compile(_SCRIPT.replace('"__main__" == __name__', "True"), str(script), "exec"), main.__dict__)
    found = {name for name in dir(main) if spawning.found_in_children(getattr(main, name))}
    assert found == {"Top", "top", "in_try", "in_if", "local_there"}
    assert spawning.found_in_children(main.Top.method)  # by its qualified name
    assert not spawning.found_in_children(lambda: None)
    top = main.top
    main.top = lambda: None  # the name no longer holds the function: not by name
    assert not spawning.found_in_children(top)
    main.__file__ = "<stdin>"  # no script the children run
    assert not spawning.found_in_children(main.Top)
