"""The one exception every reader in weights_convert raises for bad input."""


class ConvertError(ValueError):
    """A source file is unreadable, unsafe or not a VGG19. The message is one line, fit for the user."""

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))
