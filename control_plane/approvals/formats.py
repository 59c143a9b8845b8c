"""Webhook body formats: `standard` (the event envelope as JSON) and `slack` (Block Kit with buttons)."""

from __future__ import annotations

from typing import Any

FORMATS = ("standard", "slack")

_TITLES = {
    "review.created": "Statement waiting for approval",
    "review.decided": "Statement review decided",
    "review.expired": "Statement review expired",
    "review.executed": "Approved statement ran",
    "access_request.created": "Access request waiting for approval",
    "access_request.decided": "Access request decided",
    "access_request.expired": "Access request expired",
    "break_glass.used": ":rotating_light: BREAK-GLASS used",
}


def render(fmt: str, envelope: dict[str, Any]) -> dict[str, Any]:
    if fmt == "slack":
        return slack_message(envelope)
    return envelope


def _code(text: str, limit: int = 2500) -> str:
    text = text if len(text) <= limit else text[:limit] + "…"
    return "```" + text.replace("```", "`\u200b``") + "```"


def slack_message(envelope: dict[str, Any]) -> dict[str, Any]:
    """A Block Kit message; pending items carry Approve/Deny buttons whose value names the item."""
    event: str = envelope["type"]
    data: dict[str, Any] = envelope["data"]
    title = _TITLES.get(event, event)
    kind = data.get("kind", "review")
    lines = [
        f"*{title}* — {kind.replace('_', ' ')} `{data['id']}` ({data.get('state')})",
        f"*Requester:* {data.get('requester')}   *Connection:* {data.get('connection')}",
    ]
    if kind == "review":
        lines.append(f"*Policy:* {data.get('policy')} / {data.get('rule')}")
    else:
        lines.append(f"*Policy:* {data.get('policy')}   *For:* {data.get('duration_seconds')} s")
    if data.get("reason"):
        lines.append(f"*Reason:* {data['reason']}")
    if data.get("comment"):
        lines.append(f"*Comment:* {data['comment']}")
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}]
    if kind == "review" and data.get("sql"):
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _code(str(data["sql"]))}})
    if data.get("state") == "pending" and event.endswith(".created"):
        value = f"{kind}:{data['id']}"
        blocks.append(
            {
                "type": "actions",
                "block_id": f"pgward:{value}",
                "elements": [
                    {
                        "type": "button",
                        "action_id": "approve",
                        "style": "primary",
                        "text": {"type": "plain_text", "text": "Approve"},
                        "value": value,
                    },
                    {
                        "type": "button",
                        "action_id": "deny",
                        "style": "danger",
                        "text": {"type": "plain_text", "text": "Deny"},
                        "value": value,
                    },
                ],
            }
        )
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"<{data.get('url')}|{data.get('url')}>"}],
        }
    )
    return {"text": f"{title}: {kind} {data['id']}", "blocks": blocks}
