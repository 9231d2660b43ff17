"""Domain errors: every rule the aggregates refuse to break has one."""


class DomainError(Exception):
    """A command broke a rule of the domain; nothing was recorded."""


class InvalidValueError(DomainError):
    """A value is out of its allowed range or shape (bad input)."""


class RuleViolationError(DomainError):
    """The command conflicts with the aggregate's current state (a business rule)."""


class IllegalTransitionError(RuleViolationError):
    """The aggregate's state machine does not allow this step from its current state."""

    def __init__(self, action: str, status: str):
        super().__init__(f"cannot {action.replace('_', ' ')} when status is '{status}'")
        self.action = action
        self.status = status
