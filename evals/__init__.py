"""Eval harness: built-in prompt sets, metrics, report and regression gate.

Talks to a server only over HTTP (the ``openai`` client, in :mod:`appliance.evaluate`) and imports
no training code: nothing here pulls in torch, transformers or peft.
"""

from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
