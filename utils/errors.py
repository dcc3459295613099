"""User-facing errors: one line on stderr, exit code 2, no traceback."""
import sys


class UserError(Exception):
    """Something the user can fix (bad file, bad flag). The message says what and how."""


def located(path, line, message):
    """`file:line: message`, the form editors and terminals make clickable."""
    return UserError(f"{path}:{line}: {message}" if line else f"{path}: {message}")


def first_line(error):
    """The first line of an exception's message (library errors can run to pages), or its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def exit_on_user_error(main):
    """Run `main()`; turn a UserError into `error: ...` and exit code 2."""
    try:
        return main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
