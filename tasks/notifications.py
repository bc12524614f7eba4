"""Sending a message through a saved Prefect notification block (`notify.block`: `<type-slug>/<name>`).

Prefect ships the blocks (custom-webhook, slack-webhook, microsoft-teams-webhook, discord-webhook, mattermost-
webhook, opsgenie-webhook, pager-duty-webhook, sendgrid-email, twilio-sms, apprise) and stores their URLs and
tokens as secrets in its own database, so Lethe's settings only name the block. A webhook URL often carries a
token: nothing here logs, returns or raises anything that could contain it. A failed delivery is reported by the
block's name and the error's type only, and never stops the batch (the batch's Prefect artefacts and logs hold
the same facts).
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

MAX_BODY_CHARS = 30_000  # below every shipped block's limit (Slack's 40k, Teams' 28k... trimmed, marked)


@dataclass(frozen=True)
class Delivery:
    block: str
    subject: str
    sent: bool
    error: str | None  # the error's type and a URL-free description, when not sent


def trimmed(body: str) -> str:
    return body if len(body) <= MAX_BODY_CHARS else body[: MAX_BODY_CHARS - 40] + "\n[... trimmed; see the batch log]"


def send(block: str, subject: str, body: str) -> Delivery:
    """Load the block and send; never raises. `block` is `<type-slug>/<name>` of a saved block."""
    from prefect.blocks.core import Block

    try:
        notifier = Block.load(block)
    except Exception as error:  # a missing block, or Prefect's API down: say which, not where
        return Delivery(block, subject, False, f"{type(error).__name__}: could not load the block {block}")
    if not hasattr(notifier, "notify") or not hasattr(notifier, "raise_on_failure"):
        return Delivery(block, subject, False, f"the block {block} is not a notification block")
    try:
        with notifier.raise_on_failure():  # Apprise-based blocks only log a failed delivery otherwise
            notifier.notify(body=trimmed(body), subject=subject)
    except Exception as error:  # httpx/apprise errors quote the URL: keep only the type and the status
        status = getattr(getattr(error, "response", None), "status_code", None)
        return Delivery(block, subject, False, f"{type(error).__name__}" + (f" (HTTP {status})" if status else ""))
    return Delivery(block, subject, True, None)


notify_task = task(send, name="notify", cache_policy=NO_CACHE)
