"""Every AWS call the emulated platform makes as the execution role, recorded and judged.

moto enforces identity policies on S3 object and bucket requests (the resource is the object's
ARN), but for every other service it checks the action against ``Resource: "*"`` only, so a
policy scoped to a log group or a KMS key denies everything there; it never evaluates bucket
policies or KMS key policies, and it skips every condition operator but StringEquals (which would
make the bucket's TLS-only Deny match every request). So each call the platform makes for the
role is also recorded here as (principal, action, resource ARN, condition context) and judged
against the deployed documents (the role's policies, the bucket policy, the key policy, the trust
policy): the statements are matched with moto's own ``IAMPolicyStatement`` (Action/NotAction,
Resource/NotResource), conditions with the operators below (an operator the judge does not know
fails loudly), combined as AWS does within one account: an explicit Deny anywhere wins; S3 allows
when the identity policy or the bucket policy allows; KMS allows when the key policy allows the
principal, or allows the account root and the identity policy allows.

Calls AWS makes implicitly are recorded too: ``kms:Decrypt`` for reading an SSE-KMS object,
``kms:GenerateDataKey`` for writing one, ``kms:CreateGrant`` for an encrypted volume, the ECR
pulls of the image, the ENIs of a job in a VPC.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Call:
    principal: str  # the caller's ARN (assumed-role session, or a service principal)
    action: str  # e.g. "s3:GetObject"
    resource: str  # ARN
    context: tuple[tuple[str, str], ...] = ()  # condition keys, e.g. (("s3:prefix", "aiops/data/x/"),)
    doing: str = ""  # what the platform was doing, for the message

    def describe(self) -> str:
        extra = "".join(f" with {k}={v}" for k, v in self.context if not k.startswith("aws:"))
        return f"{self.action} on {self.resource}{extra}"


@dataclass
class Documents:
    """The deployed policy documents the judge evaluates against."""

    identity: list[dict[str, Any]]  # the role's policies
    bucket_policies: dict[str, dict[str, Any]] = field(default_factory=dict)  # bucket name -> policy
    key_policies: dict[str, dict[str, Any]] = field(default_factory=dict)  # key ARN -> policy
    trust: dict[str, dict[str, Any]] = field(default_factory=dict)  # role ARN -> trust policy
    account: str = "123456789012"

    def without_statement(self, sid: str) -> Documents:
        """The same documents with one statement of the role's policies removed."""
        identity = []
        found = False
        for doc in self.identity:
            kept = [s for s in _statements(doc) if s.get("Sid") != sid]
            found = found or len(kept) != len(_statements(doc))
            identity.append({**doc, "Statement": kept})
        if not found:
            raise KeyError(f"no statement {sid!r} in the role's policies")
        return Documents(identity, self.bucket_policies, self.key_policies, self.trust, self.account)


class AccessDenied(Exception):
    def __init__(self, call: Call, reason: str) -> None:
        self.call = call
        self.reason = reason
        super().__init__(
            f"AccessDenied: {call.principal} is not authorized to perform {call.describe()} "
            f"({reason}){' while ' + call.doing if call.doing else ''}"
        )


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, (str, dict)) else list(value)


def _statements(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return _listed(doc.get("Statement"))


def _glob(pattern: str, value: str) -> bool:
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def _condition_holds(operator: str, key: str, expected: Any, context: dict[str, str]) -> bool:
    if_exists = operator.endswith("IfExists")
    op = operator.removesuffix("IfExists")
    wanted = [str(v).lower() if op == "Bool" else str(v) for v in _listed(expected)]
    if key not in context:
        return if_exists or op.startswith(("StringNot", "ArnNot"))
    actual = context[key]
    if op in ("StringEquals", "ArnEquals"):
        return actual in wanted
    if op in ("StringNotEquals", "ArnNotEquals"):
        return actual not in wanted
    if op in ("StringLike", "ArnLike"):
        return any(_glob(w, actual) for w in wanted)
    if op in ("StringNotLike", "ArnNotLike"):
        return not any(_glob(w, actual) for w in wanted)
    if op == "StringEqualsIgnoreCase":
        return actual.lower() in [w.lower() for w in wanted]
    if op == "Bool":
        return actual.lower() in wanted
    raise NotImplementedError(f"iam_judge: condition operator {operator} is not evaluated here; add it")


def _principal_matches(principal_element: Any, principal: str, account: str) -> bool:
    if principal_element is None:
        return True  # identity policy: the statement applies to its holder
    if principal_element == "*":
        return True
    if isinstance(principal_element, dict):
        for kind, values in principal_element.items():
            for value in _listed(values):
                if value == "*":
                    return True
                if kind == "Service" and principal == value:
                    return True
                if kind == "AWS":
                    root = value == account or value.endswith(f":iam::{account}:root")
                    if root and (f"::{account}:" in principal):
                        return True
                    if value == principal or _role_of_session(principal) == value:
                        return True
    return False


def _role_of_session(principal: str) -> str | None:
    """arn:aws:sts::ACCT:assumed-role/NAME/SESSION -> arn:aws:iam::ACCT:role/NAME"""
    if ":assumed-role/" not in principal:
        return None
    head, _, rest = principal.partition(":assumed-role/")
    account = head.rsplit(":", 1)[-1]
    return f"arn:aws:iam::{account}:role/{rest.split('/')[0]}"


def statement_applies(statement: dict[str, Any], call: Call, account: str, *, resource_policy: bool) -> bool:
    """Whether one statement covers the call (Effect aside)."""
    from moto.iam.access_control import IAMPolicyStatement

    matcher = IAMPolicyStatement(statement)
    if "NotAction" in statement:
        if matcher._check_element_matches("NotAction", call.action):
            return False
    elif not matcher._check_element_matches("Action", call.action):
        return False
    if "Resource" in statement and not matcher._check_element_matches("Resource", call.resource):
        return False
    if "NotResource" in statement and matcher._check_element_matches("NotResource", call.resource):
        return False
    if resource_policy and not _principal_matches(statement.get("Principal"), call.principal, account):
        return False
    context = dict(call.context)
    for operator, block in (statement.get("Condition") or {}).items():
        for key, expected in block.items():
            if not _condition_holds(operator, key, expected, context):
                return False
    return True


def _verdict(
    docs: list[dict[str, Any]], call: Call, account: str, *, resource_policy: bool
) -> tuple[str | None, str]:
    """('Deny', sid) if a statement denies, ('Allow', sid) if one allows, (None, '') otherwise."""
    allowed = None
    for doc in docs:
        for statement in _statements(doc):
            if statement_applies(statement, call, account, resource_policy=resource_policy):
                if statement.get("Effect") == "Deny":
                    return "Deny", statement.get("Sid", "")
                allowed = allowed or statement.get("Sid", "(no Sid)")
    return ("Allow", allowed) if allowed else (None, "")


def evaluate(docs: Documents, call: Call) -> str | None:
    """None when AWS would allow the call, else the reason it would not."""
    service = call.action.split(":", 1)[0]
    if call.action == "sts:AssumeRole":
        trust = docs.trust.get(call.resource)
        if trust is None:
            return f"no trust policy known for {call.resource}"
        effect, sid = _verdict([trust], call, docs.account, resource_policy=True)
        return None if effect == "Allow" else "the role's trust policy does not allow it"
    identity_effect, identity_sid = _verdict(docs.identity, call, docs.account, resource_policy=False)
    if identity_effect == "Deny":
        return f"explicit deny in the role's policy, statement {identity_sid}"
    resource_docs: list[dict[str, Any]] = []
    where = ""
    if service == "s3":
        bucket = call.resource.split(":::", 1)[1].split("/", 1)[0]
        if bucket in docs.bucket_policies:
            resource_docs, where = [docs.bucket_policies[bucket]], f"the policy of bucket {bucket}"
    elif service == "kms":
        if call.resource not in docs.key_policies:
            return f"no key policy known for {call.resource}"
        resource_docs, where = [docs.key_policies[call.resource]], "the key policy"
    resource_effect, resource_sid = _verdict(resource_docs, call, docs.account, resource_policy=True)
    if resource_effect == "Deny":
        return f"explicit deny in {where}, statement {resource_sid}"
    if service == "kms":
        key_doc = resource_docs[0]
        direct = any(
            statement.get("Effect") == "Allow"
            and statement_applies(statement, call, docs.account, resource_policy=True)
            and not _delegates_to_account(statement, docs.account)
            for statement in _statements(key_doc)
        )
        delegated = any(
            _delegates_to_account(s, docs.account)
            and statement_applies(s, call, docs.account, resource_policy=True)
            for s in _statements(key_doc)
        )
        if direct or (delegated and identity_effect == "Allow"):
            return None
        if not delegated and not direct:
            return "the key policy allows it neither to the principal nor to the account"
        return "no statement of the role's policy allows it"
    if identity_effect == "Allow" or resource_effect == "Allow":
        return None
    return "no statement of the role's policy allows it"


def _delegates_to_account(statement: dict[str, Any], account: str) -> bool:
    principal = statement.get("Principal")
    if not isinstance(principal, dict):
        return False
    return any(
        v == account or str(v).endswith(f":iam::{account}:root") for v in _listed(principal.get("AWS"))
    )


class Judge:
    """Records every call made for the role and raises AccessDenied where AWS would deny it.

    ``documents()`` is called for each judgement, so a policy changed in moto during a test is
    what the next call is judged against.
    """

    def __init__(self, documents: Callable[[], Documents]) -> None:
        self._documents = documents
        self.calls: list[Call] = []

    def check(self, call: Call) -> None:
        self.calls.append(call)
        reason = evaluate(self._documents(), call)
        if reason is not None:
            raise AccessDenied(call, reason)


def denials(docs: Documents, calls: list[Call]) -> list[AccessDenied]:
    """Re-evaluate recorded calls against other documents (e.g. one statement removed)."""
    found = []
    for call in calls:
        reason = evaluate(docs, call)
        if reason is not None:
            found.append(AccessDenied(call, reason))
    return found


def documents_from_moto(
    clients: Callable[[str], Any],
    *,
    role_arn: str,
    buckets: list[str],
    keys: list[str],
    account: str = "123456789012",
) -> Documents:
    """The deployed documents, read back from moto with the platform's (admin) credentials."""
    from urllib.parse import unquote

    iam = clients("iam")
    role_name = role_arn.rsplit("/", 1)[1]
    identity = []
    for name in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=role_name, PolicyName=name)["PolicyDocument"]
        identity.append(json.loads(unquote(document)) if isinstance(document, str) else document)
    trust_doc = iam.get_role(RoleName=role_name)["Role"]["AssumeRolePolicyDocument"]
    trust = {role_arn: json.loads(unquote(trust_doc)) if isinstance(trust_doc, str) else trust_doc}
    s3 = clients("s3")
    bucket_policies = {}
    for bucket in buckets:
        try:
            bucket_policies[bucket] = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
        except s3.exceptions.ClientError as err:
            if err.response["Error"]["Code"] != "NoSuchBucketPolicy":
                raise
    kms = clients("kms")
    key_policies = {
        key: json.loads(kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"]) for key in keys
    }
    return Documents(identity, bucket_policies, key_policies, trust, account)
