"""sandbox: code runs, who may run code, and the common-error registry with its defaults

Revision ID: 0004_sandbox
Revises: 0003_runner
Create Date: 2026-11-30 21:00:00
"""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_sandbox"
down_revision: str | None = "0003_runner"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SEED_NAMESPACE = uuid.UUID("6f1b1f0e-3c1a-4d65-9a59-2f3c0d5e7a10")

# The shared defaults: (key, error_type, message_regex, code_regex, priority, title,
# explanation, hint). Ids derive from the key, so a later migration can update an entry.
PYTHON_DEFAULTS: list[tuple[str, str | None, str | None, str | None, int, str, str, str]] = [
    (
        "name-typo",
        "NameError",
        r"name '.+' is not defined",
        None,
        0,
        "A name is used that Python does not know",
        "Python reached a name that was never assigned, imported or defined in this scope. "
        "Most often it is a typo (a misspelt variable or function), a variable used before the "
        "line that creates it, or a module used without its import.",
        "Compare the name in the message with where you defined it, letter by letter; check "
        "the capitalisation and that the definition runs before this line.",
    ),
    (
        "indent-expected",
        "IndentationError",
        r"expected an indented block",
        None,
        0,
        "A block is missing its indented body",
        "After a line ending with ':' (if, for, while, def, class, try...), Python needs at "
        "least one indented line that forms the block's body.",
        "Indent the body by four spaces, or write `pass` if the block is intentionally empty.",
    ),
    (
        "indent-unexpected",
        "IndentationError",
        r"unexpected indent",
        None,
        0,
        "A line is indented where no block starts",
        "This line is indented more than the line before it, but the line before does not open "
        "a block with ':'. Python uses indentation to group statements, so stray spaces matter.",
        "Line the statement up with its neighbours, or add the ':' line that should open a block.",
    ),
    (
        "indent-unindent",
        "IndentationError",
        r"unindent does not match",
        None,
        0,
        "A line's indentation matches no outer block",
        "When a block ends, the next line must return to exactly the indentation of an "
        "enclosing block. This one stops somewhere in between.",
        "Use the same number of spaces as the block you mean to return to (four per level).",
    ),
    (
        "tabs-spaces",
        "TabError",
        None,
        None,
        0,
        "Tabs and spaces are mixed in the indentation",
        "Some lines of this block are indented with tabs and others with spaces. They look "
        "alike in an editor but Python cannot tell which level you mean.",
        "Configure your editor to insert four spaces for a tab and re-indent the file.",
    ),
    (
        "syntax-never-closed",
        "SyntaxError",
        r"was never closed|unexpected EOF",
        None,
        1,
        "A bracket or quote is never closed",
        "Python reached the end of the file (or of the statement) while a '(', '[', '{' or a "
        "string was still open.",
        "Look at the line in the message and the ones above it for an opening bracket or quote "
        "without its partner.",
    ),
    (
        "syntax-colon",
        "SyntaxError",
        r"expected ':'",
        None,
        1,
        "A ':' is missing",
        "Statements that open a block (if, elif, else, for, while, def, class, try, except, "
        "with) end with a colon.",
        "Add ':' at the end of the line the message points to.",
    ),
    (
        "syntax-assign-compare",
        "SyntaxError",
        r"Maybe you meant '==' ",
        None,
        1,
        "'=' used where a comparison was meant",
        "A single '=' assigns a value; comparing two values needs '=='.",
        "Write `if x == 3:` rather than `if x = 3:`.",
    ),
    (
        "syntax-generic",
        "SyntaxError",
        None,
        None,
        -1,
        "Python cannot read this line",
        "The line the message points to is not valid Python: a missing operator, comma, quote or "
        "bracket, or a keyword used as a name.",
        "Read the line (and the one above it) slowly, checking each bracket, quote and comma.",
    ),
    (
        "index-off-by-one",
        "IndexError",
        r"index out of range",
        None,
        0,
        "An index past the end of the sequence (often off by one)",
        "Indices start at 0, so a sequence of length n has indices 0 to n-1. Reading index n, "
        "or looping with range(len(x) + 1) or `<=`, goes one past the end.",
        "Loop with `for item in items:` or `range(len(items))`, and check `<` versus `<=`.",
    ),
    (
        "key-missing",
        "KeyError",
        None,
        None,
        0,
        "A dictionary has no such key",
        "The code read a key that is not in the dictionary. The message shows the missing key; "
        "check its spelling, its type (1 and '1' are different keys) and that it was added first.",
        "Use `d.get(key, default)` or test `if key in d:` before reading it.",
    ),
    (
        "zero-division",
        "ZeroDivisionError",
        None,
        None,
        0,
        "Division by zero",
        "A division or modulo had 0 as its divisor. The value may come from an empty list's "
        "length or a counter that was never increased.",
        "Check the divisor before dividing, e.g. `if count: average = total / count`.",
    ),
    (
        "recursion-depth",
        "RecursionError",
        r"maximum recursion depth",
        None,
        0,
        "The recursion never reaches its base case",
        "A function kept calling itself until Python's limit (about 1000 calls). Usually the "
        "base case is missing, or the recursive call does not move towards it.",
        "Check that every recursive call works on a smaller input and that the base case "
        "returns without recursing.",
    ),
    (
        "concat-str-int",
        "TypeError",
        r"can only concatenate str|must be str, not",
        None,
        1,
        "Text and a number are joined with '+'",
        "'+' joins two strings or adds two numbers, but not one of each.",
        "Convert explicitly: `'total: ' + str(n)`, or use an f-string: `f'total: {n}'`.",
    ),
    (
        "operand-types",
        "TypeError",
        r"unsupported operand type",
        None,
        0,
        "An operator is used on values it does not work with",
        "The operation in the message is not defined for these two types, for example adding "
        "None to a number, or subtracting strings.",
        "Print the two values (and `type(value)`) just before the line to see what they are.",
    ),
    (
        "missing-self",
        "TypeError",
        r"takes \d+ positional arguments? but \d+ (were|was) given",
        None,
        1,
        "A function got more arguments than it takes (often a missing `self`)",
        "The call passes more arguments than the definition accepts. For a method, Python "
        "passes the object itself as the first argument, so the definition needs `self`.",
        "Add `self` as the first parameter of methods, or check the number of arguments.",
    ),
    (
        "missing-argument",
        "TypeError",
        r"missing \d+ required positional argument",
        None,
        1,
        "A function is called without all its arguments",
        "The definition requires more arguments than the call gives. The message names the "
        "missing one.",
        "Pass the missing argument, or give the parameter a default value.",
    ),
    (
        "none-subscript",
        "TypeError",
        r"'NoneType' object is not (subscriptable|iterable)",
        None,
        2,
        "A value is None where a list or dict was expected",
        "The code indexes or loops over something that is None. A function that ends without "
        "`return` gives None, and so do methods like list.sort() that change the list in place.",
        "Check that the function returns its result, and use `sorted(x)` rather than `x.sort()` "
        "when you need the value.",
    ),
    (
        "not-callable",
        "TypeError",
        r"object is not callable",
        None,
        1,
        "Something that is not a function is called",
        "Parentheses after a value call it. Here the value is a number, string or list, often "
        "because a variable has the same name as a function (e.g. `sum = 0` then `sum(x)`).",
        "Rename the variable that hides the function, or remove the stray parentheses.",
    ),
    (
        "none-attribute",
        "AttributeError",
        r"'NoneType' object has no attribute",
        None,
        2,
        "A method is called on None",
        "The object is None, usually because a function returned nothing or a search found "
        "nothing (re.match, dict.get).",
        "Check for None before using the result, and make sure your function returns a value.",
    ),
    (
        "attribute-missing",
        "AttributeError",
        r"has no attribute",
        None,
        0,
        "The object has no such attribute or method",
        "The name after the dot does not exist on this type. It may be misspelt, or belong to "
        "another type (for example `append` is a list method, not a string method).",
        "Check the spelling and the type of the object with `type(obj)` and `dir(obj)`.",
    ),
    (
        "int-literal",
        "ValueError",
        r"invalid literal for int\(\)",
        None,
        1,
        "Text that is not a whole number is converted with int()",
        "int() accepts only text made of digits (with an optional sign). Spaces, a decimal "
        "point or an empty string (an empty input line) are refused.",
        "Strip the text first (`int(s.strip())`), use float() for decimals, and handle empty input.",
    ),
    (
        "unbound-local",
        "UnboundLocalError",
        None,
        None,
        0,
        "A local variable is read before it is assigned",
        "Because the function assigns to this name somewhere, Python treats it as local in the "
        "whole function, so reading it before that assignment fails even if a global of the "
        "same name exists.",
        "Pass the value in as an argument, or assign it before reading it.",
    ),
    (
        "module-missing",
        "ModuleNotFoundError",
        r"No module named",
        None,
        0,
        "The module is not available",
        "The sandbox has Python's standard library only; third-party packages cannot be "
        "installed, and a module of your project must be part of the submission.",
        "Check the module name's spelling, or include your own module's file in the project.",
    ),
    (
        "file-missing",
        "FileNotFoundError",
        r"No such file or directory",
        None,
        0,
        "The file does not exist",
        "The program runs in an empty folder holding only the submitted files, so a path from "
        "your own computer does not exist here.",
        "Open files by a path relative to the project and include them in the submission.",
    ),
    (
        "infinite-loop",
        "TimeLimitExceeded",
        None,
        None,
        0,
        "The program ran out of time (often an infinite loop)",
        "The run was stopped at the time limit. A `while` loop whose condition never becomes "
        "false, or a loop waiting for input that never comes, runs forever.",
        "Check that each loop changes what its condition tests, and that input() is given stdin.",
    ),
    (
        "cpu-limit",
        "CpuTimeLimitExceeded",
        None,
        None,
        0,
        "The program used up its CPU time",
        "The computation needed more processor time than a run is allowed: an infinite loop, "
        "or an algorithm that does far more work than needed.",
        "Look for a loop that never ends, or a nested loop you can replace with a dict or set.",
    ),
    (
        "memory",
        "MemoryError",
        None,
        None,
        0,
        "The program ran out of memory",
        "A run may use a limited amount of memory. Building a very large list or string, or a "
        "list that grows in a loop that never ends, goes past it.",
        "Process data piece by piece (generators, reading line by line) instead of all at once.",
    ),
    (
        "mutable-default",
        None,
        None,
        r"def\s+\w+\s*\([^)]*=\s*(\[\]|\{\}|set\(\)|list\(\)|dict\(\))",
        -10,
        "A mutable default argument is shared between calls",
        "A default value such as `[]` or `{}` is created once, when the function is defined, "
        "and every call that uses the default shares the same object, so values from earlier "
        "calls show up in later ones.",
        "Use `None` as the default and create the list inside: "
        "`def f(items=None): items = [] if items is None else items`.",
    ),
]


def upgrade() -> None:
    op.create_table(
        "code_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("subject_kind", sa.String(length=16), nullable=False),
        sa.Column("language", sa.String(length=32), nullable=False),
        sa.Column("bundle", sa.LargeBinary(), nullable=False),
        sa.Column("stdin", sa.LargeBinary(), server_default="", nullable=False),
        sa.Column("args", postgresql.ARRAY(sa.String()), server_default="{}", nullable=False),
        sa.Column(
            "result", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_code_runs_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_code_runs_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_code_runs")),
    )
    op.create_index(op.f("ix_code_runs_job_id"), "code_runs", ["job_id"])
    op.create_index(op.f("ix_code_runs_tenant_id"), "code_runs", ["tenant_id"])
    op.create_index(
        "ix_code_runs_tenant_subject_created",
        "code_runs",
        ["tenant_id", "subject_id", "created_at"],
    )

    op.create_table(
        "run_access",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("subject_kind", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("daily_quota", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_run_access_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_access")),
        sa.UniqueConstraint(
            "tenant_id", "subject_kind", "subject_id", name=op.f("uq_run_access_tenant_id")
        ),
    )
    op.create_index(op.f("ix_run_access_tenant_id"), "run_access", ["tenant_id"])

    patterns = op.create_table(
        "error_patterns",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("language", sa.String(length=32), nullable=False),
        sa.Column("error_type", sa.String(length=200), nullable=True),
        sa.Column("message_regex", sa.String(length=500), nullable=True),
        sa.Column("code_regex", sa.String(length=500), nullable=True),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.Column("hint", sa.Text(), server_default="", nullable=False),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default="true", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_error_patterns_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_error_patterns")),
    )
    op.create_index(op.f("ix_error_patterns_tenant_id"), "error_patterns", ["tenant_id"])
    op.create_index("ix_error_patterns_language_type", "error_patterns", ["language", "error_type"])

    op.create_table(
        "error_pattern_hits",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("pattern_id", sa.Uuid(), nullable=False),
        sa.Column("hits", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("last_hit_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["pattern_id"],
            ["error_patterns.id"],
            name=op.f("fk_error_pattern_hits_pattern_id_error_patterns"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_error_pattern_hits_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "pattern_id", name=op.f("pk_error_pattern_hits")),
    )

    op.bulk_insert(
        patterns,
        [
            {
                "id": uuid.uuid5(_SEED_NAMESPACE, f"python/{key}"),
                "tenant_id": None,
                "language": "python",
                "error_type": error_type,
                "message_regex": message_regex,
                "code_regex": code_regex,
                "priority": priority,
                "title": title,
                "explanation": explanation,
                "hint": hint,
                "enabled": True,
            }
            for key, error_type, message_regex, code_regex, priority, title, explanation, hint in PYTHON_DEFAULTS
        ],
    )


def downgrade() -> None:
    op.drop_table("error_pattern_hits")
    op.drop_index("ix_error_patterns_language_type", table_name="error_patterns")
    op.drop_index(op.f("ix_error_patterns_tenant_id"), table_name="error_patterns")
    op.drop_table("error_patterns")
    op.drop_index(op.f("ix_run_access_tenant_id"), table_name="run_access")
    op.drop_table("run_access")
    op.drop_index("ix_code_runs_tenant_subject_created", table_name="code_runs")
    op.drop_index(op.f("ix_code_runs_tenant_id"), table_name="code_runs")
    op.drop_index(op.f("ix_code_runs_job_id"), table_name="code_runs")
    op.drop_table("code_runs")
