"""What the flwr CLI is given to submit: only what the app's FAB holds."""

from server.deployment.flwr_cli import stage_app


def test_the_staged_app_holds_the_project_file_and_packages_only(tmp_path):
    app = tmp_path / "app"
    kept = ("pyproject.toml", ".gitignore", "pkg/__init__.py")
    left_out = ("pkg/__pycache__/x.pyc", "data/x.npz", ".venv/__init__.py", "README.md")
    for path in kept + left_out:
        (app / path).parent.mkdir(parents=True, exist_ok=True)
        (app / path).write_text("")
    staged = stage_app(app, tmp_path / "staged")
    files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    assert files == [".gitignore", "pkg/__init__.py", "pyproject.toml"]
