"""The steps a plan is made of: small frozen values that can be printed, logged and compared."""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.runtime.api import ContainerRequest


@dataclass(frozen=True)
class Pull:
    module: str
    image: str
    reason: str

    def describe(self) -> str:
        return f"pull {self.image}"


@dataclass(frozen=True)
class Create:
    module: str
    request: ContainerRequest
    reason: str

    def describe(self) -> str:
        return f"create {self.request.name} from {self.request.image}"


@dataclass(frozen=True)
class Start:
    module: str
    container: str
    reason: str
    is_restart: bool = False  # counts towards the module's restart backoff

    def describe(self) -> str:
        return f"{'restart' if self.is_restart else 'start'} {self.container}"


@dataclass(frozen=True)
class Stop:
    module: str
    container: str
    grace_s: float
    reason: str

    def describe(self) -> str:
        return f"stop {self.container} (grace {self.grace_s:g} s)"


@dataclass(frozen=True)
class Remove:
    module: str
    container: str
    reason: str

    def describe(self) -> str:
        return f"remove {self.container}"


Action = Pull | Create | Start | Stop | Remove


@dataclass(frozen=True)
class Wait:
    """Nothing to do for a module until `until` (restart backoff); not an action."""

    module: str
    until: float
    reason: str


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    waits: tuple[Wait, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.actions

    @property
    def wake_at(self) -> float | None:
        return min((w.until for w in self.waits), default=None)

    def lines(self) -> list[str]:
        out = [f"{a.module}: {a.describe()}  ({a.reason})" for a in self.actions]
        out += [f"{w.module}: waiting until {w.until:.1f} ({w.reason})" for w in self.waits]
        return out


def action_to_dict(action: Action) -> dict[str, object]:
    return {"action": type(action).__name__.lower(), "module": action.module, "what": action.describe(),
            "reason": action.reason}
