"""Publishing a saved model to the Hugging Face Hub (``push_to_hub`` in a trainer's config).

    push_to_hub("runs/prm/final", "me/tiny-prm")     # -> "https://huggingface.co/me/tiny-prm"

The folder goes up as it is (weights, tokenizer, config, the model card ``README.md``), without
the trainer state of a checkpoint. The token is huggingface_hub's usual one (``HF_TOKEN`` or
``huggingface-cli login``) unless given.
"""

from __future__ import annotations

from pathlib import Path

from rewardlab.config import ConfigError

NOT_UPLOADED = ["trainer_state.pt", "*.tmp", ".*"]
"""Files of a model folder that stay local."""


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` when it is a hub model repo id (``owner/name`` or ``name``, as
    huggingface_hub validates it), else a one-line ValueError."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ValueError(f"push_to_hub: {repo_id!r} is not a hub repo id (owner/name or name: "
                         "letters, digits, '-', '_', '.')") from None
    return repo_id


def check_push(repo_id: str | None, token: str | None = None) -> None:
    """Refuse, before any work, a push that cannot happen: a malformed repo id (ValueError) or
    no Hugging Face token (ConfigError: ``HF_TOKEN`` unset and no ``hf auth login``)."""
    if not repo_id:
        return
    check_repo_id(str(repo_id))
    from huggingface_hub import get_token

    if not (token or get_token()):
        raise ConfigError(f"push_to_hub={repo_id}: no Hugging Face token; set HF_TOKEN or run "
                          "`hf auth login` first (or leave push_to_hub unset)")


def push_to_hub(folder: str | Path, repo_id: str, *, token: str | None = None,
                private: bool | None = None, commit_message: str | None = None,
                api=None) -> str:
    """Create ``repo_id`` (a model repository; an existing one is reused) and upload ``folder``
    to it in one commit. Returns the repository's URL. ``api``: an ``HfApi`` (default: a new
    one). Raises FileNotFoundError for a folder without ``config.json`` (not a saved model) and
    ValueError for a repo id that is not ``owner/name`` or ``name``."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no saved model (no config.json)")
    check_repo_id(repo_id)
    if api is None:
        from huggingface_hub import HfApi
        api = HfApi(token=token)
    url = api.create_repo(repo_id, token=token, private=private, repo_type="model",
                          exist_ok=True)
    repo = getattr(url, "repo_id", None) or repo_id
    api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model", token=token,
                      commit_message=commit_message or f"Upload {folder.name} with rewardlab",
                      ignore_patterns=NOT_UPLOADED)
    return str(url)
