"""Apply deployment/terraform/ against moto's server mode (`make terraform-moto`): no AWS account.

`terraform test` (make deploy-lint) plans against a mock provider, which answers anything. This
goes one step further: a real `terraform apply` with the AWS provider's endpoints pointed at a
local moto server (moto[server], in the dev extra), which creates the resources and refuses
what AWS would refuse where moto models it (a missing certificate, a policy that does not
exist, an ordering mistake). It shows which resources moto can create and which it cannot.

1. moto_server on a free loopback port (with AWS's managed IAM policies loaded), and an ACM
   certificate in it for the HTTPS listener;
2. a copy of the module in var/terraform-moto/module/ with a provider override file (the
   endpoints, fake credentials) and without the resources moto cannot even plan (KNOWN_GAPS:
   the AWS provider calls an API moto lacks and retries it for many minutes);
3. `terraform plan -out`, then `terraform apply` of that plan (bounded by --timeout);
4. var/terraform-moto/summary.{json,md}: every planned resource, created or failed (with the
   error), and the gaps left out.

The exit status is 0 when every planned resource was created, 1 otherwise. `make test` runs it
after `make deploy-lint` (about 2.5 minutes). It needs .venv (make setup) and the `terraform`
binary: without it, it says so and exits 0, as the Terraform steps of deploy-lint do. The AWS
provider comes from a local mirror when one is found, as in scripts/deploy_lint.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy_lint import TERRAFORM_DIR, TERRAFORM_ENV, find_plugin_dir

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.harness.processes import free_port  # noqa: E402

OUT = REPO / "var" / "terraform-moto"
REGION = "eu-west-1"
# Services the stack calls, by the provider's endpoint names.
SERVICES = [
    "acm",
    "appautoscaling",
    "autoscaling",
    "cloudwatch",
    "ec2",
    "ecr",
    "ecs",
    "efs",
    "elbv2",
    "events",
    "iam",
    "kms",
    "logs",
    "rds",
    "s3",
    "scheduler",
    "secretsmanager",
    "servicediscovery",
    "sfn",
    "ssm",
    "sts",
]
# What moto cannot take: (file, resource type or None for the whole file, why). Each is cut
# from the copy, because the provider retries the failing call until the timeout.
KNOWN_GAPS = (
    (
        "rotation.tf",
        None,
        "moto has no ValidateStateMachineDefinition, which the provider calls for "
        "aws_sfn_state_machine while planning (the file's rule and roles need the machine)",
    ),
    ("efs.tf", "aws_efs_backup_policy", "moto has no PutBackupPolicy"),
    (
        "autoscaling.tf",
        None,
        "moto's Application Auto Scaling has no ListTagsForResource, which the provider calls "
        "after creating aws_appautoscaling_target (the policies need the targets)",
    ),
    (
        "s3.tf",
        "aws_s3_bucket_logging",
        'moto answers PutBucketLogging with a 500 when the log bucket\'s policy has a "*" '
        "principal (its permission check expects a mapping there)",
    ),
    (
        "emr.tf",
        None,
        "moto makes an EMR Serverless application straight in STARTED, where AWS answers "
        "CREATING, then CREATED, which the provider waits for until it fails (the file's job "
        "role and outputs need the application; batch_enabled is false by default, so the "
        "default run plans none of it)",
    ),
)

log = logging.getLogger("terraform-moto")


def start_moto(port: int) -> subprocess.Popen:
    """moto_server on 127.0.0.1:`port`, answering once it is up."""
    moto = Path(sys.executable).with_name("moto_server")
    if not moto.is_file():
        raise RuntimeError(
            f"{moto} is missing: run `make setup` (moto[server] is in the dev extra)"
        )
    env = {**os.environ, "MOTO_IAM_LOAD_MANAGED_POLICIES": "true"}
    OUT.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=(OUT / "moto.log").open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    client = boto3.client("sts", **client_options(port))
    deadline = time.monotonic() + 30
    while True:
        try:
            client.get_caller_identity()
            return server
        except Exception:  # not up yet
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"moto_server did not start; see {OUT / 'moto.log'}") from None
            time.sleep(0.3)


def client_options(port: int) -> dict:
    return {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "region_name": REGION,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }


def cut_block(text: str, kind: str) -> str:
    """`text` without every `resource "<kind>" "..." { ... }` block (braces matched)."""
    while match := re.search(rf'^resource "{kind}" "[^"]+" \{{', text, re.M):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                break
        text = text[: match.start()] + text[end + 1 :]
    return text


def prepare_module(port: int) -> Path:
    """The module's copy with the endpoints override and without the known gaps."""
    module = OUT / "module"
    shutil.rmtree(module, ignore_errors=True)
    module.mkdir(parents=True)
    for path in TERRAFORM_DIR.glob("*.tf"):
        shutil.copy(path, module / path.name)
    for file, kind, _ in KNOWN_GAPS:
        target = module / file
        if kind is None:
            target.unlink()
        else:
            target.write_text(cut_block(target.read_text(), kind))
    endpoints = "\n".join(f'    {name} = "http://127.0.0.1:{port}"' for name in SERVICES)
    (module / "moto_override.tf").write_text(
        f"""provider "aws" {{
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  s3_use_path_style           = true
  endpoints {{
{endpoints}
  }}
}}
"""
    )
    return module


def terraform(
    module: Path, *args: str, timeout: float | None = None
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **TERRAFORM_ENV,
        "TF_VAR_admin_token": "moto-admin-token-" + "0" * 32,
        "TF_VAR_feedback_token": "moto-feedback-token-" + "0" * 32,
    }
    return subprocess.run(
        ["terraform", f"-chdir={module}", *args, "-no-color"],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def errors_by_address(output: str) -> dict[str, str]:
    """address -> the first line of its error, from terraform's output."""
    found = {}
    for block in output.split("Error: ")[1:]:
        address = re.search(r"\n\s*with ([^\s,]+),", block)
        if address:
            found.setdefault(address[1], block.splitlines()[0].strip()[:300])
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds for the apply")
    parser.add_argument("--plugin-dir", help="a local Terraform provider mirror (see deploy_lint)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[terraform-moto] %(message)s")
    if shutil.which("terraform") is None:
        log.warning(
            "SKIPPED: no `terraform` on the PATH, so nothing was applied (install Terraform "
            "1.11 or newer: https://developer.hashicorp.com/terraform/install)"
        )
        return 0

    port = free_port()
    server = start_moto(port)
    try:
        certificate = boto3.client("acm", **client_options(port)).request_certificate(
            DomainName="api.example.test"
        )["CertificateArn"]
        module = prepare_module(port)
        plugin_dir = find_plugin_dir(args.plugin_dir)
        init = terraform(
            module, "init", "-backend=false", *([f"-plugin-dir={plugin_dir}"] if plugin_dir else [])
        )
        if init.returncode:
            log.error("terraform init failed:\n%s", init.stdout + init.stderr)
            return 1
        variables = [
            "-var=environment=moto",
            "-var=image_tag=moto-1",
            f"-var=certificate_arn={certificate}",
        ]
        started = time.monotonic()
        plan = terraform(module, "plan", "-out=moto.tfplan", *variables, timeout=args.timeout)
        if plan.returncode:
            log.error("terraform plan failed:\n%s", plan.stdout[-3000:] + plan.stderr)
            return 1
        shown = json.loads(terraform(module, "show", "-json", "moto.tfplan").stdout)
        planned = sorted(
            change["address"]
            for change in shown.get("resource_changes", [])
            if change["mode"] == "managed" and "create" in change["change"]["actions"]
        )
        log.info(
            "planned %d resources in %.0f s; applying", len(planned), time.monotonic() - started
        )
        try:
            apply = terraform(
                module, "apply", "-parallelism=10", "moto.tfplan", timeout=args.timeout
            )
            output = apply.stdout + apply.stderr
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode() + (exc.stderr or b"").decode()
            output += f"\nError: the apply did not finish within {args.timeout:.0f} s\n"
        (OUT / "apply.log").write_text(output)
        created = set(terraform(module, "state", "list").stdout.split())
        errors = errors_by_address(output)
        elapsed = time.monotonic() - started
    finally:
        server.terminate()
        server.wait(10)

    rows = [
        {
            "address": address,
            "created": address in created,
            "error": "" if address in created else errors.get(address, "not reached"),
        }
        for address in planned
    ]
    summary = {
        "planned": len(planned),
        "created": sum(row["created"] for row in rows),
        "seconds": round(elapsed, 1),
        "left_out": [{"file": f, "resource": k or "(all)", "why": why} for f, k, why in KNOWN_GAPS],
        "resources": rows,
    }
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# terraform apply against moto: {summary['created']} of {summary['planned']} resources "
        f"created in {elapsed:.0f} s",
        "",
        "| resource | created | error |",
        "|---|---|---|",
        *(
            f"| `{row['address']}` | {'yes' if row['created'] else 'no'} | {row['error']} |"
            for row in rows
        ),
        "",
        "Left out (moto cannot take them):",
        *(
            f"- {f'`{kind}` in ' if kind else 'all of '}`{file}`: {why}"
            for file, kind, why in KNOWN_GAPS
        ),
    ]
    (OUT / "summary.md").write_text("\n".join(lines) + "\n")
    failed = [row for row in rows if not row["created"]]
    for row in failed:
        log.error("not created: %s: %s", row["address"], row["error"])
    log.info(
        "%d of %d planned resources created in %.0f s; %s",
        summary["created"],
        summary["planned"],
        elapsed,
        OUT / "summary.md",
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
