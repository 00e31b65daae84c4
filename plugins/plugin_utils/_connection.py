# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The natsops.fleet.nats connection plugin itself (plugins/connection/nats.py holds its documentation).

Private to this collection; controller-only. Every task's worker imports it; nats.py loads it with its compiled
code kept across workers (plugin_utils/_codecache.py), since ansible-core's plugin loader compiles a plugin file from
source in every worker where Python keeps no bytecode (``PYTHONDONTWRITEBYTECODE``, a read-only collection)."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import os
from gettext import dgettext
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_native, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

from ansible_collections.natsops.fleet.plugins.plugin_utils import _codecache
from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorTaskError, ExecutorUnreachable
from ansible_collections.natsops.fleet.plugins.plugin_utils._mux import MuxClient
from ansible_collections.natsops.fleet.plugins.plugin_utils._options import read_options
from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import (
    E_ACCOUNT, E_BECOME, E_BECOME_TIMEOUT, OPTION_NAMES, TRUST_NAMES, WireError, validate_instance_id, validate_namespace,
)

display = Display()

FQCN = "natsops.fleet.nats"
# how ansible-core's connections open the message of a failed privilege escalation, by the executor's reason
_BECOME_REASONS = {"premature_end": "Premature end of stream", "duplicate_prompt": "Duplicate become password prompt encountered",
                   "timeout": "Timed out"}


COLLECTION = "natsops.fleet"


_FRAGMENTS = "ansible_collections.natsops.fleet.plugins.doc_fragments."


def _option_definitions(documentation: str, load: Callable[[str], Any], used: Optional[List[str]] = None) -> Dict[str, Any]:
    """This plugin's option definitions as ansible-core builds them: DOCUMENTATION with its documentation
    fragments (natsops.fleet.nats.*) merged the way ``ansible.utils.plugin_docs.add_fragments`` merges them,
    every YAML text parsed with ``load``; the fragments' modules are added to ``used``. Raises LookupError for a
    fragment of another collection."""
    from ansible.utils.plugin_docs import add_collection_to_versions_and_dates, merge_fragment  # pylint: disable=import-outside-toplevel

    doc = load(documentation)
    for slug in doc.pop("extends_documentation_fragment", []):
        prefix, _dot, name = slug.partition(COLLECTION + ".")
        if prefix or not name:
            raise LookupError("documentation fragment %s is not this collection's" % slug)
        module_name, _dot, variable = name.partition(".")
        fragments = importlib.import_module(_FRAGMENTS + module_name)
        if used is not None and module_name not in used:
            used.append(module_name)
        fragment = load(getattr(fragments.ModuleDocFragment, variable.upper() or "DOCUMENTATION"))
        add_collection_to_versions_and_dates(fragment, COLLECTION, is_module=False)
        for key in ("notes", "seealso"):  # text for ansible-doc only
            fragment.pop(key, None)
        for key in ("options", "attributes"):
            if key in fragment:
                if key in doc:
                    merge_fragment(doc[key], fragment.pop(key))
                else:
                    doc[key] = fragment.pop(key)
        merge_fragment(doc, fragment)
    return doc["options"]


def _fragments_digest(modules: Iterable[str]) -> Optional[str]:
    """The SHA-256 of the documentation fragment modules ``modules`` (their source files), None when one is missing."""
    digest = hashlib.sha256()
    for name in modules:
        path = _codecache.source_path(_FRAGMENTS + name)
        if path is None:
            return None
        with open(path, "rb") as handle:
            digest.update(b"%s\0%s\0" % (name.encode("utf-8"), handle.read()))
    return digest.hexdigest()


def _cached_option_definitions(documentation: str, origin: str, load: Callable[[str], Any], versions: Iterable[str]) -> Any:
    """``_option_definitions(documentation, load)``, kept across workers (plugin_utils/_codecache.py, for the plugin
    file ``origin``) while the documentation, its fragments' modules and ``versions`` (ansible-core's, the YAML
    parser's) are unchanged."""
    def make() -> Tuple[List[str], Optional[str], Dict[str, Any]]:
        used: List[str] = []
        options = _option_definitions(documentation, load, used)
        return used, _fragments_digest(used), options

    def valid(value: Any) -> bool:
        return (isinstance(value, tuple) and len(value) == 3 and isinstance(value[0], list) and value[1] is not None
                and value[1] == _fragments_digest(value[0]))

    key = [documentation.encode("utf-8")] + [version.encode("utf-8") for version in versions]
    return _codecache.cached_value("connection-nats-options", origin, key, make, valid)[2]


def register_option_definitions(name: str, documentation: str, origin: str) -> None:
    """Speed: give ansible-core the plugin's option definitions (``documentation``: its DOCUMENTATION; ``name``: its
    Python module name, which ansible-core files them under; ``origin``: its file) before it parses them itself.

    ansible-core loads builtin connection plugins' definitions in the parent process before it forks a
    worker per task, but not those of collection plugins, so every worker parsed this DOCUMENTATION and its
    fragments again with its tagging YAML loader: about 7 ms of every task (docs/performance.md). The C YAML
    parser yields the same data in under 2 ms (tests/unit/plugins/connection/test_nats.py compares the two);
    the fragments come from plugins/doc_fragments/nats.py, which holds only strings.
    The result is kept across workers while what it is made from is unchanged (3 ms less per task).
    Without libyaml, or when ansible-core's config manager does not offer this, nothing is registered here
    and ansible-core parses as usual.
    """
    try:
        import yaml  # pylint: disable=import-outside-toplevel
        from ansible import constants as C  # pylint: disable=import-outside-toplevel
        from ansible.release import __version__ as ansible_version  # pylint: disable=import-outside-toplevel

        loader = getattr(yaml, "CSafeLoader", None)
        if loader is None or C.config.has_configuration_definition("connection", name):
            return
        options = _cached_option_definitions(documentation, origin, lambda text: yaml.load(text, Loader=loader),  # nosec: the C safe loader
                                             (ansible_version, "PyYAML " + getattr(yaml, "__version__", "?")))
        if isinstance(options, dict):
            C.config.initialize_plugin_configuration_definitions("connection", name, options)
    except Exception:  # pylint: disable=broad-except
        return  # ansible-core reads the documentation itself


class Connection(ConnectionBase):
    """Run tasks through a natsops executor over NATS."""

    transport = FQCN
    has_pipelining = True
    has_tty = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: Any = None  # a MuxClient, or an ExecutorClient with control_persist 0
        self._account: Optional[str] = None  # the account the executor says it runs commands as
        self._account_asked = False

    def _host(self) -> str:
        return self._play_context.remote_addr

    def set_options(self, task_keys: Optional[Dict[str, Any]] = None, var_options: Optional[Dict[str, Any]] = None,
                    direct: Optional[Dict[str, Any]] = None) -> None:
        # ansible-core gives every connection plugin the host login password (ansible_password, -k) as the
        # task key 'password'. Here 'password' is the NATS password, so that value goes to ssh_password.
        login_password = None
        if task_keys and "password" in task_keys:
            task_keys = dict(task_keys)
            login_password = task_keys.pop("password")
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        if login_password and not self.get_option("ssh_password"):
            self.set_option("ssh_password", login_password)

    def get_option(self, option: str, hostvars: Optional[Dict[str, Any]] = None) -> Any:
        """remote_user, when not set, is the account the executor runs as (agent mode) or root (mode ssh)."""
        value = super().get_option(option, hostvars=hostvars)
        if option == "remote_user" and not value:
            value = self._executor_account() if self.get_option("mode") != "ssh" else None
            value = value or "root"
        return value

    def _executor_account(self) -> Optional[str]:
        """The account the executor reports, asked once per connection (the control process keeps it per executor).
        None when it cannot be learnt now (the executor is starting, too old to say, NATS down): the first command
        then says what is wrong, and one sent without become meets the executor's own run_as check."""
        if self._account is None and not self._account_asked:
            self._account_asked = True
            try:
                self._connect()
                self._account = self._client.account(min(float(super().get_option("connect_timeout")), 2.0))
            except (AnsibleConnectionFailure, WireError, OSError) as exc:
                display.vvv("NATS: the executor's account is not known (%s)" % exc, host=self._host())
                return None
            if self._account:
                display.vvv("NATS: the executor runs commands as %s" % self._account, host=self._host())
        return self._account

    def update_vars(self, variables: Dict[str, Any]) -> None:
        """ansible-core passes every variable of the task here: warn about an ansible_nats_* variable that is no
        option of this connection (a typo such as ansible_nats_server would otherwise be ignored silently)."""
        super().update_vars(variables)
        from ansible import constants as C  # pylint: disable=import-outside-toplevel
        known = set(C.config.get_plugin_vars("connection", self._load_name))
        for name in sorted(v for v in variables if isinstance(v, str) and v.startswith("ansible_nats_") and v not in known):
            close = difflib.get_close_matches(name, sorted(v for v in known if v.startswith("ansible_nats_")), n=1)
            display.warning("natsops.fleet.nats: variable %s (host %s) is not an option of this connection and is "
                            "ignored%s" % (name, self._host(), " (did you mean %s?)" % close[0] if close else ""))

    def _connect(self) -> "Connection":
        if self._connected:
            return self
        options = read_options(self.get_option, OPTION_NAMES + TRUST_NAMES)
        instance = self.get_option("executor")
        namespace = self.get_option("namespace")
        timeout = float(self.get_option("connect_timeout"))
        persist = float(self.get_option("control_persist"))
        try:
            validate_instance_id(instance)
            validate_namespace(namespace)
        except WireError as exc:
            raise AnsibleConnectionFailure("natsops.fleet.nats: %s" % exc.message) from None
        ssh_target = self._ssh_target() if self.get_option("mode") == "ssh" else None
        display.vvv("NATS CONNECT executor=%s namespace=%s mode=%s control_persist=%s" % (
            instance, namespace, self.get_option("mode"), persist), host=self._host())
        name = "ansible natsops.fleet.nats"
        try:
            executor_wait = float(self.get_option("executor_wait"))
            if persist > 0:
                target = {"instance_id": instance, "namespace": namespace, "executor_wait": executor_wait}
                if ssh_target:
                    target["target"] = ssh_target
                self._client = MuxClient.connect(options, timeout, persist, name, target)
            else:
                from ansible_collections.natsops.fleet.plugins.module_utils._client import ExecutorClient  # pylint: disable=import-outside-toplevel
                self._client = ExecutorClient(options, instance, namespace=namespace, connect_timeout=timeout, name=name,
                                              target=ssh_target, executor_wait=executor_wait).connect()
        except ExecutorUnreachable as exc:
            raise AnsibleConnectionFailure("natsops.fleet.nats: %s" % exc.message) from None
        except (ValueError, WireError) as exc:
            raise AnsibleConnectionFailure("natsops.fleet.nats: bad connection options: %s" % exc) from None
        self._connected = True
        return self

    def _ssh_target(self) -> Dict[str, Any]:
        """Where a zone executor should SSH to, and with which credentials (mode ssh)."""
        target = {"host": self._play_context.remote_addr, "port": int(self.get_option("port")),
                  "user": self.get_option("remote_user")}
        identity = self.get_option("ssh_identity")
        password = self.get_option("ssh_password")
        key_file = self.get_option("ssh_private_key_file")
        if identity:
            target["identity"] = identity
        if password:
            target["password"] = to_text(password)
        if key_file:
            try:
                with open(to_bytes(key_file, errors="surrogate_or_strict"), "rb") as handle:
                    target["private_key"] = to_text(handle.read())
            except OSError as exc:
                raise AnsibleConnectionFailure("natsops.fleet.nats: cannot read ssh_private_key_file %s: %s" % (key_file, exc)) from None
            if self.get_option("ssh_private_key_passphrase"):
                target["passphrase"] = to_text(self.get_option("ssh_private_key_passphrase"))
        return target

    def _call(self, what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a client call, turning its errors into Ansible errors (never a traceback). Each message is complete:
        the cause is not chained, since ansible-core would print its text a second time."""
        try:
            return func(*args, **kwargs)
        except ExecutorUnreachable as exc:
            if exc.code == E_BECOME_TIMEOUT:
                raise AnsibleConnectionFailure(self._become_failure(exc)) from None
            raise AnsibleConnectionFailure("natsops.fleet.nats: %s failed: %s" % (what, exc.message)) from None
        except ExecutorTaskError as exc:
            if exc.code == E_BECOME:
                raise AnsibleError(self._become_failure(exc)) from None
            raise AnsibleError("natsops.fleet.nats: %s failed (%s): %s" % (what, exc.code, exc.message)) from None
        except (ValueError, WireError) as exc:
            raise AnsibleError("natsops.fleet.nats: %s failed: %s" % (what, exc)) from None
        except OSError as exc:  # a local file (put source, fetch destination) could not be used
            raise AnsibleError("natsops.fleet.nats: %s failed on the controller: %s" % (what, exc)) from None

    def _become_spec(self, in_data: Optional[bytes], sudoable: bool) -> Tuple[Optional[Dict[str, Any]], bool]:
        """What the executor needs to escalate privileges as ansible's own connections do: the become plugin's
        success marker, its password prompt and messages (all literal text), the password."""
        if not (sudoable and self.become and self.become._id):
            return None, False
        spec = {"success": self.become.success, "timeout": float(self.get_option("connect_timeout")),
                "fail": self._become_texts(self.become.fail), "missing": self._become_texts(self.become.missing)}
        use_pty = False
        if self.become.expect_prompt():
            spec.update(self._become_prompt())
            spec["password"] = to_text(self.become.get_option("become_pass", playcontext=self._play_context) or "")
            use_pty = in_data is None
        return spec, use_pty

    def _become_texts(self, texts: Any) -> Optional[List[str]]:
        """The become plugin's messages, as written and as translated for its name (what check_incorrect_password
        and check_missing_password look for)."""
        found: List[str] = []
        for text in texts or ():
            for variant in (to_text(text), to_text(dgettext(self.become.name, text))):
                if variant and variant not in found:
                    found.append(variant)
        return found or None

    def _become_prompt(self) -> Dict[str, Any]:
        """The become plugin's password prompt: a line prefix (BecomeBase's rule, sudo), or su's words."""
        words = getattr(self.become, "SU_PROMPT_LOCALIZATIONS", None)
        if words:
            try:
                words = self.become.get_option("prompt_l10n") or words
            except KeyError:
                pass
            return {"prompt_words": [to_text(w) for w in words]}
        prompt = self.become.prompt
        if isinstance(prompt, str) and prompt.strip():
            return {"prompt_prefix": prompt.strip()}
        raise AnsibleError("natsops.fleet.nats: become method %r asks for a password in a way this connection "
                           "cannot answer; use sudo or su, or a password-less become" % self.become.name)

    def _become_failure(self, exc: Any) -> str:
        """ansible-core's own message for a failed privilege escalation (its connections' wording), from the
        executor's reason and what the escalation command printed."""
        details = exc.details or {}
        reason = details.get("reason")
        if reason == "incorrect_password":
            return "Incorrect %s password" % self.become.name
        if reason == "missing_password":
            return "Missing %s password" % self.become.name
        opening = _BECOME_REASONS.get(reason)
        if opening is None:
            return "natsops.fleet.nats: privilege escalation failed (%s): %s" % (exc.code, exc.message)
        message = "%s waiting for become success" % opening
        if details.get("expected_prompt") and not details.get("sent_password"):
            message += " or become password prompt"
        message += "."
        if details.get("stdout"):
            message += "\n>>> Standard Output\n%s" % details["stdout"]
        if details.get("stderr"):
            message += "\n>>> Standard Error\n%s" % details["stderr"]
        return message

    def _skipped_become(self, sudoable: bool) -> Optional[str]:
        """remote_user when ansible-core left become out of this command because become_user equals it (its action
        plugins' rule), else None: the command then relies on starting as that account."""
        if not (sudoable and self.become):
            return None
        from ansible import constants as C  # pylint: disable=import-outside-toplevel
        ruser = self.get_option("remote_user")
        buser = self.become.get_option("become_user", playcontext=self._play_context)
        if C.BECOME_ALLOW_SAME_USER or not ruser or ruser != buser:
            return None
        return to_text(ruser)

    def exec_command(self, cmd: str, in_data: Optional[bytes] = None, sudoable: bool = True) -> Tuple[int, bytes, bytes]:
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        run_as = self._skipped_become(sudoable)
        if run_as is not None and self._account not in (None, run_as):
            cmd, run_as = self._escalate(cmd, run_as), None

        def run(command: str, expected: Optional[str]) -> Tuple[int, bytes, bytes]:
            become, use_pty = self._become_spec(in_data, sudoable)
            display.vvv("NATS EXEC %s%s" % (to_text(command), " (stdin %d bytes)" % len(in_data) if in_data else ""),
                        host=self._host())
            return self._client.exec_command(command=to_text(command), stdin=to_bytes(in_data) if in_data else None,
                                             become=become, pty=use_pty, timeout=float(self.get_option("task_timeout")),
                                             no_log=bool(getattr(self._play_context, "no_log", False)), run_as=expected,
                                             warm=bool(self.get_option("warm")))

        def run_escalating() -> Tuple[int, bytes, bytes]:
            try:
                return run(cmd, run_as)
            except ExecutorTaskError as exc:
                if exc.code != E_ACCOUNT or run_as is None:
                    raise
                self._account = to_text((exc.details or {}).get("account") or "?")
                return run(self._escalate(cmd, run_as), None)

        return self._call("exec", run_escalating)

    def _escalate(self, cmd: str, run_as: str) -> str:
        """The command with the become method applied, for an executor whose account is not remote_user (nothing ran
        yet): become was asked for, and left out only because become_user equals remote_user."""
        display.vvv("NATS EXEC: the executor runs commands as %s, not as remote_user %s: applying become (%s) here"
                    % (self._account, run_as, self.become.name), host=self._host())
        return self.become.build_become_command(cmd, self._shell)

    def put_file(self, in_path: str, out_path: str) -> None:
        super().put_file(in_path, out_path)
        display.vvv("NATS PUT %s TO %s" % (in_path, out_path), host=self._host())
        if not os.path.exists(to_bytes(in_path, errors="surrogate_or_strict")):
            raise AnsibleFileNotFound("file or module does not exist: %s" % to_native(in_path))
        self._call("put %s" % out_path, self._client.put_file, in_path, out_path)

    def fetch_file(self, in_path: str, out_path: str) -> None:
        super().fetch_file(in_path, out_path)
        display.vvv("NATS FETCH %s TO %s" % (in_path, out_path), host=self._host())
        self._call("fetch %s" % in_path, self._client.fetch_file, in_path, out_path)

    def reset(self) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._connected = False
