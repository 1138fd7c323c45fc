"""The environment record that travels with every result."""
from importlib import metadata

from open_clip_c2lip import environment


def test_describe_names_installed_versions_and_cpu():
    env = environment.describe()
    assert env["packages"]["torch"] == metadata.version("torch")
    assert env["packages"]["open_clip_torch"] == metadata.version("open_clip_torch")
    assert env["packages"]["numpy"] == metadata.version("numpy")
    assert isinstance(env["cpu"], str) and env["cpu"]
    assert env["cpu_count"] >= 1


def test_missing_package_is_none_not_an_error():
    assert environment.package_version("no-such-distribution-c2lip") is None


def test_markdown_line_lists_versions():
    line = environment.markdown()
    assert f"torch {metadata.version('torch')}" in line
    assert "\n" not in line
