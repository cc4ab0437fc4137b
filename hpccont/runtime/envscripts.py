"""The image's environment scripts (``/.singularity.d/env/*.sh``), evaluated without a shell.

Apptainer sources these scripts with a shell interpreter built into its runtime.  Running
``/bin/sh`` for them instead costs every launch a second exec and a shell start-up, and puts a
process between hpccont and the command (exec once is the rule).  Environment scripts use a
small part of the shell language — assignments, ``export``, ``unset``, ``if``/``for`` with
``test``, parameter expansion, ``.`` of other scripts — so this module evaluates that part in
Python and raises ``Unsupported`` for anything else (command substitution, output, other
commands, redirections, functions, ``exit``...).  The runtime then falls back to the shell,
exactly as before, so an image behaves the same either way; tests compare both on the same
scripts.

Only what is executed must be understood: a branch that is not taken may hold commands,
redirections and pipes (SCIF's app script prints an error in a branch that normal runs never
take).  A here-document anywhere means the shell: its lines are data that we could mistake
for commands.
"""
from __future__ import annotations

import os


class Unsupported(Exception):
    """The scripts need a real shell."""


# ---------------------------------------------------------------------------------------------
# Lexing: words (as parts, keeping their quoting) and the operators that separate commands.

OPERATORS = ("&&", "||", ";;", ";", "\n", "|", "&", "(", ")", "<<", "<", ">")
SPECIAL = set(";\n|&()<> \t")


class Word:
    """A shell word: parts are ("lit", text, quoted) and ("var", name, op, Word|None, quoted)."""
    __slots__ = ("parts",)

    def __init__(self, parts):
        self.parts = parts

    def plain(self) -> str | None:
        """The word's text when it has no expansion and no quoting (keywords, names)."""
        if len(self.parts) == 1 and self.parts[0][0] == "lit" and not self.parts[0][2]:
            return self.parts[0][1]
        return None


def tokenize(text: str) -> list:
    """Words and operator strings; comments dropped.  Unterminated quotes raise."""
    if "\0" in text:
        # no variable can hold a NUL byte, and what each shell makes of one differs
        raise Unsupported("a NUL byte in the script")
    out: list = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t":
            i += 1
        elif c == "\\" and text.startswith("\\\n", i):
            i += 2
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in SPECIAL:
            op = next(o for o in OPERATORS if text.startswith(o, i))
            out.append(op)
            i += len(op)
        else:
            word, i = _word(text, i, stop=SPECIAL)
            out.append(word)
    return out


def _word(text: str, i: int, stop) -> tuple[Word, int]:
    parts: list = []
    lit: list = []

    def flush(quoted: bool = False):
        if lit:
            parts.append(("lit", "".join(lit), quoted))
            lit.clear()
    n = len(text)
    while i < n and text[i] not in stop:
        c = text[i]
        if c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise Unsupported("unterminated quote")
            flush()
            parts.append(("lit", text[i + 1:end], True))
            i = end + 1
        elif c == '"':
            flush()
            i = _double_quoted(text, i + 1, parts)
        elif c == "\\":
            if i + 1 < n and text[i + 1] == "\n":
                i += 2
                continue
            flush()
            parts.append(("lit", text[i + 1:i + 2], True))
            i += 2
        elif c == "$":
            flush()
            i = _dollar(text, i, parts, quoted=False)
        elif c == "`":
            raise Unsupported("command substitution")
        else:
            lit.append(c)
            i += 1
    flush()
    return Word(parts), i


def _double_quoted(text: str, i: int, parts: list) -> int:
    lit: list = []
    n = len(text)
    while True:
        if i >= n:
            raise Unsupported("unterminated quote")
        c = text[i]
        if c == '"':
            break
        if c == "\\" and i + 1 < n and text[i + 1] in '$`"\\\n':
            if text[i + 1] != "\n":
                lit.append(text[i + 1])
            i += 2
        elif c == "$":
            if lit:
                parts.append(("lit", "".join(lit), True))
                lit = []
            i = _dollar(text, i, parts, quoted=True)
        elif c == "`":
            raise Unsupported("command substitution")
        else:
            lit.append(c)
            i += 1
    parts.append(("lit", "".join(lit), True))   # may be empty: "" is a word
    return i + 1


NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _dollar(text: str, i: int, parts: list, quoted: bool) -> int:
    """``$NAME``, ``$?``, ``${NAME}``, ``${NAME[:]-+=]word}``; anything else is Unsupported."""
    n = len(text)
    j = i + 1
    if j < n and text[j] == "{":
        k = j + 1
        while k < n and text[k] in NAME_CHARS:
            k += 1
        name = text[j + 1:k]
        if not name or name[0].isdigit():
            raise Unsupported("special parameter expansion")
        if text.startswith("}", k):
            parts.append(("var", name, "", None, quoted))
            return k + 1
        op = text[k:k + 2] if text[k:k + 1] == ":" else text[k:k + 1]
        if op not in (":-", "-", ":+", "+", ":=", "="):
            raise Unsupported("parameter expansion operator")
        word, end = _word(text, k + len(op), stop={"}"})
        if end >= n or text[end] != "}":
            raise Unsupported("unterminated ${")
        parts.append(("var", name, op, word, quoted))
        return end + 1
    if j < n and text[j] == "?":
        parts.append(("var", "?", "", None, quoted))
        return j + 1
    k = j
    while k < n and text[k] in NAME_CHARS:
        k += 1
    name = text[j:k]
    if not name:
        if j < n and text[j] in "({":
            raise Unsupported("command or arithmetic substitution")
        if j < n and text[j] in "@*#!$-0123456789":
            raise Unsupported("special parameter")
        parts.append(("lit", "$", quoted))          # a lone $ is literal
        return j
    if name[0].isdigit():
        raise Unsupported("positional parameter")
    parts.append(("var", name, "", None, quoted))
    return k


# ---------------------------------------------------------------------------------------------
# Parsing: a script is a list of and-or lists; compound commands hold lists of their own.

# Reserved words that only close or continue a compound command.
RESERVED = ("then", "else", "elif", "fi", "do", "done", "in", "esac", "}")


class Parser:
    def __init__(self, tokens: list):
        self.toks = tokens
        self.i = 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else None

    def keyword(self):
        t = self.peek()
        return t.plain() if isinstance(t, Word) else None

    def take(self):
        t = self.peek()
        self.i += 1
        return t

    def skip_separators(self) -> None:
        """Newlines, and one ';' where a command ended: ';' with no command before it is a
        syntax error for every shell (which then stops sourcing the script)."""
        if self.peek() == ";":
            self.i += 1
        self.skip_newlines_only()

    def body(self, ends: tuple) -> list:
        """Commands up to (not including) one of the keywords ``ends``."""
        out = []
        self.skip_newlines_only()
        while True:
            if self.peek() == ";":
                raise Unsupported("';' without a command")
            if self.peek() is None:
                if ends:
                    raise Unsupported(f"missing {ends[-1]}")
                return out
            if self.keyword() in ends:
                if ends and not out:
                    # 'then fi', 'do done': a syntax error for every shell, which then stops
                    # sourcing; evaluating it anyway would give an environment sh never gives
                    raise Unsupported(f"empty list before {self.keyword()!r}")
                return out
            out.append(self.and_or())
            self.skip_separators()

    def and_or(self) -> list:
        """[(None, cmd), ("&&", cmd), ("||", cmd) ...]"""
        items = [(None, self.command())]
        while self.peek() in ("&&", "||"):
            op = self.take()
            while self.peek() == "\n":
                self.i += 1
            items.append((op, self.command()))
        if self.peek() not in (None, ";", "\n"):
            raise Unsupported(f"{self.peek()!r} after a command")
        return items

    def command(self):
        kw = self.keyword()
        if kw == "if":
            return self.if_clause()
        if kw == "for":
            return self.for_clause()
        if kw in ("while", "until", "case", "{", "function", "!"):
            raise Unsupported(f"'{kw}'")
        if kw in RESERVED:
            # where a command should start, a syntax error for sh, even in a branch not taken
            raise Unsupported(f"'{kw}' where a command was expected")
        words = []
        while isinstance(self.peek(), Word):
            words.append(self.take())
        if not words:
            raise Unsupported(f"{self.peek()!r} where a command was expected")
        if self.peek() == "<<":
            # a here-document's lines are data, not commands: we cannot even skip them
            raise Unsupported("here-document")
        if self.peek() in ("|", "&", "(", ")", "<", ">"):
            # pipes, background jobs, redirections: a command we will not run ourselves;
            # its tokens are skipped so that an untaken branch may hold it, but an operator
            # with nothing after it is a syntax error, which stops sh even there
            last = None
            while self.peek() not in (None, ";", "\n", "&&", "||"):
                last = self.take()
                if last == "<<":
                    raise Unsupported("here-document")
                if last in ("<", ">") and self.peek() not in (">", "&") and not isinstance(
                        self.peek(), Word):
                    raise Unsupported(f"{last!r} without a file")
                if last in ("(", ")"):
                    # subshells and functions: whether 'a(b' parses is sh's business
                    raise Unsupported("parentheses")
            if last in ("|", "<", ">", "("):
                raise Unsupported(f"{last!r} at the end of a command")
            return ("unsupported", "redirection, pipe or subshell")
        return ("simple", words)

    def if_clause(self):
        self.take()
        branches = []
        while True:
            cond = self.body(("then",))
            self.take()
            block = self.body(("elif", "else", "fi"))
            branches.append((cond, block))
            kw = self.take().plain()
            if kw == "elif":
                continue
            other = []
            if kw == "else":
                other = self.body(("fi",))
                self.take()
            return ("if", branches, other)

    def for_clause(self):
        self.take()
        name = self.take()
        if not isinstance(name, Word) or not _is_name(name.plain() or ""):
            raise Unsupported("for without a name")      # sh: "Bad for loop variable"
        self.skip_newlines_only()
        if self.keyword() != "in":
            raise Unsupported("for without 'in'")
        self.take()
        items = []
        while isinstance(self.peek(), Word):
            items.append(self.take())
        self.skip_separators()
        if self.keyword() != "do":
            raise Unsupported("for without 'do'")
        self.take()
        block = self.body(("done",))
        self.take()
        return ("for", name.plain(), items, block)

    def skip_newlines_only(self) -> None:
        while self.peek() == "\n":
            self.i += 1


def parse(text: str) -> list:
    try:
        return Parser(tokenize(text)).body(())
    except RecursionError:
        raise Unsupported("nested deeper than the interpreter's stack") from None


# ---------------------------------------------------------------------------------------------
# Evaluation.

# Variables a shell gives itself when the environment has none, each shell its own values
# (dash: PS1 '# ' for root, busybox: a prompt with the directory; PPID...): reading or
# exporting one of them unset is left to the shell that will actually run.
SHELL_VARIABLES = frozenset(("IFS", "OPTIND", "PATH", "PPID", "PS1", "PS2", "PS4", "PWD",
                             "HOSTNAME", "LINENO", "FUNCNAME", "SHLVL"))


class Shell:
    """Variables, which of them are exported, and the last status, as /bin/sh would keep them
    while sourcing the scripts.  The initial environment is all exported."""

    MAX_DEPTH = 16

    def __init__(self, environ: dict[str, str]):
        self.vars = dict(environ)
        self.exported = set(environ)
        self.status = 0
        self.depth = 0

    def environment(self) -> dict[str, str]:
        return {k: v for k, v in self.vars.items() if k in self.exported}

    # -- running ------------------------------------------------------------------------------
    def source(self, path: str) -> None:
        if self.depth >= self.MAX_DEPTH:
            raise Unsupported("scripts nested too deep")
        try:
            # newline="": a carriage return is a character for sh, not a line end
            with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
                text = f.read()
        except OSError:
            raise Unsupported(f"cannot read {path}") from None
        self.depth += 1
        try:
            self._run(parse(text))
        finally:
            self.depth -= 1

    def run(self, commands: list) -> None:
        """Run parsed commands.  Nesting deeper than Python's stack is left to the shell."""
        try:
            self._run(commands)
        except RecursionError:
            raise Unsupported("nested deeper than the interpreter's stack") from None

    def _run(self, commands: list) -> None:
        for and_or in commands:
            self.run_and_or(and_or)

    def run_and_or(self, items: list) -> None:
        for op, cmd in items:
            if op == "&&" and self.status != 0 or op == "||" and self.status == 0:
                continue
            self.run_command(cmd)

    def run_command(self, cmd) -> None:
        kind = cmd[0]
        if kind == "simple":
            self.simple(cmd[1])
        elif kind == "if":
            for cond, block in cmd[1]:
                self._run(cond)
                if self.status == 0:
                    self._run(block)
                    return
            self.status = 0
            self._run(cmd[2])
        elif kind == "for":
            self.status = 0
            for value in [v for w in cmd[2] for v in self.fields(w)]:
                self.vars[cmd[1]] = value
                self._run(cmd[3])
        else:
            raise Unsupported(cmd[1])

    def simple(self, words: list) -> None:
        i = 0
        while i < len(words) and _assignment(words[i]):
            i += 1
        assignments, rest = words[:i], words[i:]
        if not rest:
            for w in assignments:
                name, value = self.assignment(w)
                self.vars[name] = value
            self.status = 0
            return
        if assignments:
            raise Unsupported("assignments before a command")
        name = self.expand(rest[0])
        builtin = BUILTINS.get(name)
        if builtin is None:
            raise Unsupported(f"command {name!r}")
        builtin(self, rest[1:])

    # -- expansion ----------------------------------------------------------------------------
    def assignment(self, word: Word) -> tuple[str, str]:
        first = word.parts[0][1]
        name, _, head = first.partition("=")
        value = Word([("lit", head, False)] + word.parts[1:])
        return name, self.expand(value, assignment=True)

    def expand(self, word: Word, assignment: bool = False) -> str:
        """The word as one string (no field splitting, no pathname expansion: refused where
        the shell would do them and they could change the result)."""
        out = []
        if not assignment and _vanishes(self, word):
            raise Unsupported("an unquoted empty expansion removes the word")
        for part in word.parts:
            if part[0] == "lit":
                text, quoted = part[1], part[2]
                if not quoted and not assignment and _glob(text):
                    raise Unsupported("pathname expansion")
                if not quoted and (text.startswith("~") and not out
                                   or assignment and ":~" in text):
                    raise Unsupported("tilde expansion")
                out.append(text)
            else:
                value = self.parameter(part)
                if not part[4] and not assignment and (_ifs(value) or _glob(value)):
                    raise Unsupported("field splitting")
                out.append(value)
        return "".join(out)

    def fields(self, word: Word) -> list[str]:
        """A for-loop item: pathname expansion of quoted/unquoted parts as the shell does;
        field splitting of unquoted expansions is refused."""
        pattern, magic = [], False
        for part in word.parts:
            if part[0] == "lit":
                text, quoted = part[1], part[2]
                if quoted:
                    pattern.append(_escape_glob(text))
                else:
                    magic = magic or _glob(text)
                    pattern.append(text)
            else:
                value = self.parameter(part)
                if not part[4] and (_ifs(value) or _glob(value)):
                    raise Unsupported("field splitting")
                pattern.append(_escape_glob(value))
        text = "".join(pattern)
        if not magic:
            return [] if _vanishes(self, word) else [self.expand(word, assignment=True)]
        return pathname_expansion(text) or [_unescape_glob(text)]

    def parameter(self, part) -> str:
        _, name, op, word, _quoted = part
        if name == "?":
            return str(self.status)
        value = self.vars.get(name)
        if value is None and name in SHELL_VARIABLES:
            raise Unsupported(f"${name} unset: the shell has a value of its own")
        if not op:
            return value or ""
        empty = value is None or (op.startswith(":") and value == "")
        kind = op[-1]
        if kind == "-":
            return self.expand(word, assignment=True) if empty else value
        if kind == "+":
            return "" if empty else self.expand(word, assignment=True)
        if empty:                                   # "=": assign the default
            self.vars[name] = self.expand(word, assignment=True)
        return self.vars[name]


def _vanishes(sh: Shell, word: Word) -> bool:
    """A word made only of unquoted expansions that are all empty is removed by field
    splitting (``[ -n $EMPTY ]`` tests one argument, ``for x in $EMPTY`` loops zero times)."""
    for part in word.parts:
        if part[0] == "lit" and (part[1] or part[2]):
            return False
        if part[0] == "var" and (part[4] or sh.parameter(part) != ""):
            return False
    return True


def _is_name(text: str) -> bool:
    return bool(text) and not text[0].isdigit() and all(c in NAME_CHARS for c in text)


def _assignment(word: Word) -> bool:
    first = word.parts[0] if word.parts else None
    if not first or first[0] != "lit" or first[2] or "=" not in first[1]:
        return False
    name = first[1].split("=", 1)[0]
    return bool(name) and not name[0].isdigit() and all(c in NAME_CHARS for c in name)


def _ifs(value: str) -> bool:
    return any(c in value for c in " \t\n")


def _glob(value: str) -> bool:
    """Would the shell treat ``value`` as a pattern?  (A ``[`` without a later ``]`` is not
    one: ``[`` the command is a plain word.)"""
    if "*" in value or "?" in value:
        return True
    start = value.find("[")
    return start >= 0 and "]" in value[start + 1:]


def pathname_expansion(pattern: str) -> list[str]:
    """Paths matching ``pattern``, sorted, as the shell expands them (a leading "." must be
    matched explicitly).  Written here rather than with ``glob``: this runs after pivot_root,
    where the host's standard library can no longer be imported."""
    if not pattern.startswith("/"):
        raise Unsupported("relative pattern")
    found = ["/"]
    parts = [p for p in pattern.split("/") if p]
    for n, part in enumerate(parts):
        last = n == len(parts) - 1
        following = []
        for base in found:
            if not _glob(part):
                path = os.path.join(base, _unescape_glob(part))
                if os.path.lexists(path) and (last or os.path.isdir(path)):
                    following.append(path)
                continue
            try:
                names = os.listdir(base)
            except OSError:
                continue
            for name in sorted(names):
                if (name.startswith(".") and not part.startswith(".")) or not match(part, name):
                    continue
                if last or os.path.isdir(os.path.join(base, name)):
                    following.append(os.path.join(base, name))
        found = following
    return sorted(found)


def match(pattern: str, name: str) -> bool:
    """fnmatch for one path component: ``*``, ``?``, ``[set]``, ``[!set]``, ranges.

    Iterative, going back only to the last ``*`` on a mismatch: at most len(pattern) x
    len(name) steps.  Trying every split at every ``*`` is exponential, and an image's
    ``for f in /x/*a*a*a*...`` would hang every launch."""
    p = n = 0
    star, resume = -1, 0
    while n < len(name):
        if p < len(pattern) and pattern[p] == "*":
            star, resume = p, n
            p += 1
            continue
        step = _one(pattern, p, name[n]) if p < len(pattern) else 0
        if step:
            p, n = p + step, n + 1
        elif star >= 0:
            p, resume = star + 1, resume + 1
            n = resume
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def _one(pattern: str, p: int, c: str) -> int:
    """How much of ``pattern`` (from ``p``) one character ``c`` matches: 0 when it does not."""
    head = pattern[p]
    if head == "?":
        return 1
    if head == "[":
        end = pattern.find("]", p + 2)
        if end > 0:
            body = pattern[p + 1:end]
            negate = body[:1] == "!"
            body = body[1:] if negate else body
            hit = any(lo <= c <= hi for lo, hi in _ranges(body))
            return end - p + 1 if hit != negate else 0
    return 1 if head == c else 0


def _ranges(body: str) -> list[tuple[str, str]]:
    out, i = [], 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            out.append((body[i], body[i + 2]))
            i += 3
        else:
            out.append((body[i], body[i]))
            i += 1
    return out


def _escape_glob(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _unescape_glob(text: str) -> str:
    for c in "*?[":
        text = text.replace(f"[{c}]", c)
    return text


# ---------------------------------------------------------------------------------------------
# Built-ins: what environment scripts call.  Anything else needs the shell.

def _export(sh: Shell, words: list) -> None:
    if not words:
        raise Unsupported("export without names prints the variables")
    for w in words:
        if _assignment(w):
            name, value = sh.assignment(w)
            sh.vars[name] = value
            sh.exported.add(name)
            continue
        name = sh.expand(w)
        if not _is_name(name):                  # an option, or sh's "bad variable name"
            raise Unsupported(f"export {name}")
        if name not in sh.vars and name in SHELL_VARIABLES:
            raise Unsupported(f"export {name} unset: the shell has a value of its own")
        sh.exported.add(name)
    sh.status = 0


def _unset(sh: Shell, words: list) -> None:
    for w in words:
        name = sh.expand(w)
        # an option, or a name no variable can have (sh: "bad variable name", and the shell
        # stops: unset is a special built-in)
        if not _is_name(name):
            raise Unsupported(f"unset {name}")
        sh.vars.pop(name, None)
        sh.exported.discard(name)
    sh.status = 0


def _source(sh: Shell, words: list) -> None:
    if len(words) != 1:
        raise Unsupported(". with arguments")
    path = sh.expand(words[0])
    if "/" not in path:
        raise Unsupported(". searches PATH")   # and fails loudly in sh when missing
    if not os.path.isfile(path):
        raise Unsupported(f". {path}: no such file")
    sh.source(path)
    sh.status = 0


def _status(value: int):
    def builtin(sh: Shell, words: list) -> None:
        for w in words:
            sh.expand(w)
        sh.status = value
    return builtin


FILE_TESTS = {
    "-e": os.path.exists, "-f": os.path.isfile, "-d": os.path.isdir,
    "-L": os.path.islink, "-h": os.path.islink,
    "-r": lambda p: os.access(p, os.R_OK), "-w": lambda p: os.access(p, os.W_OK),
    "-x": lambda p: os.access(p, os.X_OK),
    "-s": lambda p: os.path.isfile(p) and os.path.getsize(p) > 0,
}
INT_TESTS = {"-eq": int.__eq__, "-ne": int.__ne__, "-lt": int.__lt__, "-le": int.__le__,
             "-gt": int.__gt__, "-ge": int.__ge__}


def _test(sh: Shell, words: list, bracket: bool = False) -> None:
    args = [sh.expand(w) for w in words]
    if bracket:
        if not args or args[-1] != "]":
            raise Unsupported("[ without ]")
        args = args[:-1]
    negate = False
    if len(args) > 1 and args[0] == "!":
        negate, args = True, args[1:]
    sh.status = 0 if _evaluate_test(args) != negate else 1


def _evaluate_test(args: list) -> bool:
    if len(args) == 0:
        return False
    if len(args) == 1:
        return args[0] != ""
    if len(args) == 2:
        op, arg = args
        if op == "-z":
            return arg == ""
        if op == "-n":
            return arg != ""
        if op in FILE_TESTS:
            return FILE_TESTS[op](arg)
    if len(args) == 3:
        left, op, right = args
        if op == "=":
            return left == right
        if op == "!=":
            return left != right
        if op in INT_TESTS:
            try:
                return INT_TESTS[op](int(left), int(right))
            except ValueError:
                raise Unsupported("integer test on a non-number") from None
    raise Unsupported(f"test {' '.join(args)}")


BUILTINS = {
    "export": _export, "unset": _unset, ".": _source, ":": _status(0), "true": _status(0),
    "false": _status(1), "test": _test, "[": lambda sh, words: _test(sh, words, bracket=True),
}


def evaluate(scripts: list[str], environ: dict[str, str]) -> dict[str, str]:
    """The environment after sourcing ``scripts`` in order, starting from ``environ``.

    Raises Unsupported when a script needs a real shell (the caller then runs /bin/sh).
    """
    sh = Shell(environ)
    try:
        for path in scripts:
            sh.source(path)
    except RecursionError:
        raise Unsupported("nested deeper than the interpreter's stack") from None
    return sh.environment()


# ---------------------------------------------------------------------------------------------
# The one evaluator of an image's environment, used by every launch (runtime/apply.py) and by the
# Slurm step's prepare (schedulers/slurm/recipe.py), which folds the result into its recipe.
# Both run it inside the container (root and working directory are the container's).

def env_scripts(dirs: list[str]) -> list[str]:
    """The ``*.sh`` files of ``dirs``, in the order ``for f in DIR/*.sh`` gives them."""
    out = []
    for d in dirs:
        try:
            names = sorted(n for n in os.listdir(d) if n.endswith(".sh"))
        except OSError:
            continue
        out += [f"{d}/{n}" for n in names if os.path.isfile(f"{d}/{n}")]
    return out


def pinned_library_path(plan) -> list[str]:
    """LD_LIBRARY_PATH entries the plan puts first (host libraries for --nv and MPI bind mode):
    they stay first even when an image's script resets the variable."""
    ld = plan.env.get("LD_LIBRARY_PATH", "")
    return [p for p in ld.split(":") if p and p != "/.singularity.d/libs"]


def image_environment(plan, env: dict[str, str]) -> dict[str, str] | None:
    """The environment the image's env scripts give the command, evaluated here; None when the
    scripts need a real shell (then ``shell_prefix`` runs them, with the same result)."""
    scripts = env_scripts(plan.env_dirs)
    if not scripts:
        return dict(env)
    env = dict(env, PWD=_shell_pwd(env.get("PWD")))
    try:
        env = evaluate(scripts, env)
    except Unsupported:
        return None
    env.update(plan.env_overrides)
    ld = pinned_library_path(plan)
    if ld:
        env["LD_LIBRARY_PATH"] = ":".join(ld + ([env["LD_LIBRARY_PATH"]]
                                                if env.get("LD_LIBRARY_PATH") else []))
    return env


def shell_prefix(plan) -> list[str]:
    """``/bin/sh -c SCRIPT hpccont``: sources the env scripts, then execs "$@" (the command and
    its arguments, untouched; $0 is "hpccont")."""
    from .environment import env_script
    return ["/bin/sh", "-c", env_script(plan.env_overrides, pinned_library_path(plan),
                                        plan.env_dirs), "hpccont"]


def _shell_pwd(pwd: str | None) -> str:
    """$PWD as a POSIX shell sets it on start: kept when it names the working directory."""
    try:
        if pwd and pwd.startswith("/") and os.path.samefile(pwd, "."):
            return pwd
    except OSError:
        pass
    return os.getcwd()
