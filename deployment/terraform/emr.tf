# Batch work on Spark (scripts/batch.py: score, embed, replay) on EMR Serverless, behind
# batch_enabled (off by default, so the default stack is unchanged). The application costs
# nothing while no job runs: it has no pre-initialised capacity, a job run starts it, and it
# stops after batch_idle_timeout_minutes without one. Its workers run in the private subnets
# with a security group of their own (security_groups.tf: PostgreSQL and HTTPS out, nothing
# in). The job role reads the artifact backups (read-only: a batch job never rewrites a
# version) and reads and writes only under batch_s3_prefix. The job's Python environment is an
# archive built by deployment/docker/Dockerfile (target batch-venv); README, "Batch on EMR
# Serverless", has the upload and the start-job-run commands.

locals {
  # The batch jobs' keys, in the artifact bucket beside the backups:
  #   <batch>/releases/<image_tag>/  batch.py, the venv archive, the JDBC driver (read-only to the job)
  #   <batch>/input/                 Parquet or CSV inputs (read-only to the job)
  #   <batch>/output/, reports/      what the jobs write (score and embed; replay's agreement reports)
  #   <batch>/logs/                  the job runs' driver and executor logs (EMR writes them as the job role)
  batch_root    = "s3://${local.artifacts_bucket}/${var.batch_s3_prefix}"
  batch_release = "${local.batch_root}/releases/${var.image_tag}"
  batch_s3 = {
    entry_point  = "${local.batch_release}/batch.py"
    venv_archive = "${local.batch_release}/pyspark_venv.tar.gz"
    jdbc_driver  = "${local.batch_release}/postgresql-jdbc.jar"
    input        = "${local.batch_root}/input/"
    output       = "${local.batch_root}/output/"
    reports      = "${local.batch_root}/reports/"
    logs         = "${local.batch_root}/logs/"
  }
  batch_read_only  = ["releases", "input"]
  batch_read_write = ["output", "reports", "logs"]

  # Spark unpacks the archive as ./environment in every worker's working directory
  # (spark.archives <archive>#environment); its Python runs the driver and the executors'
  # Python workers (EMR 7.x's own is 3.9, the project needs 3.11).
  batch_python = "./environment/bin/python"
  # The driver's worker: 2 vCPU. Executors: batch_executor_cores each, with about 1 GB per core
  # beside the JVM for the Python workers and their encoders, as many as the capacity leaves.
  batch_driver_cores   = 2
  batch_max_executors  = max(1, floor((var.batch_max_vcpu - local.batch_driver_cores) / var.batch_executor_cores))
  batch_executor_cores = tostring(var.batch_executor_cores)
  batch_executor_mem   = "${var.batch_executor_memory_gb}g"

  # The job's settings, in the driver's and the executors' environment: the stack's wiring (as
  # the trainer gets it), the encoder inside the archive, a local artifact store (versions are
  # restored from the S3 backup into it), the cluster's sizes. The database password is no
  # setting here: README, "Batch on EMR Serverless". Any other DC_* setting: one more
  # `--conf spark.emr-serverless.driverEnv.DC_...=...` (and spark.executorEnv.) on the command.
  batch_settings = merge(local.defaults, local.trainer_wiring, {
    DC_EMBEDDER_HANDLE = "./environment/embedder/all-minilm-l6-v2"
    DC_ARTIFACTS_DIR   = "./dc-artifacts"
    # Any master but local[...] keeps the one spark-submit gives (dc.batch.session).
    DC_BATCH_MASTER          = "emr-serverless"
    DC_BATCH_EXECUTOR_CORES  = local.batch_executor_cores
    DC_BATCH_EXECUTOR_MEMORY = local.batch_executor_mem
  })
  batch_conf = merge(
    {
      "spark.archives"                                       = "${local.batch_s3.venv_archive}#environment"
      "spark.jars"                                           = local.batch_s3.jdbc_driver
      "spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON" = local.batch_python
      "spark.emr-serverless.driverEnv.PYSPARK_PYTHON"        = local.batch_python
      "spark.executorEnv.PYSPARK_PYTHON"                     = local.batch_python
      "spark.driver.cores"                                   = tostring(local.batch_driver_cores)
      "spark.driver.memory"                                  = "4g"
      "spark.executor.cores"                                 = local.batch_executor_cores
      "spark.executor.memory"                                = local.batch_executor_mem
      "spark.executor.memoryOverhead"                        = "${var.batch_executor_cores}g"
      "spark.dynamicAllocation.maxExecutors"                 = tostring(local.batch_max_executors)
      # No metastore: the jobs read and write paths and JDBC tables, so the role needs no Glue.
      "spark.sql.catalogImplementation" = "in-memory"
    },
    { for k, v in local.batch_settings : "spark.emr-serverless.driverEnv.${k}" => v },
    { for k, v in local.batch_settings : "spark.executorEnv.${k}" => v },
  )
  batch_spark_submit_parameters = join(" ", [for k in sort(keys(local.batch_conf)) : "--conf ${k}=${local.batch_conf[k]}"])
}

resource "aws_emrserverless_application" "batch" {
  count         = var.batch_enabled ? 1 : 0
  name          = "${local.name}-batch"
  type          = "SPARK"
  release_label = var.batch_release_label
  # The archive's binaries (CPython, TensorFlow) are built for x86_64.
  architecture = "X86_64"

  maximum_capacity {
    cpu    = "${var.batch_max_vcpu} vCPU"
    memory = "${var.batch_max_memory_gb} GB"
  }

  auto_start_configuration {
    enabled = true
  }

  auto_stop_configuration {
    enabled              = true
    idle_timeout_minutes = var.batch_idle_timeout_minutes
  }

  network_configuration {
    subnet_ids         = local.private_subnet_ids
    security_group_ids = [aws_security_group.batch[0].id]
  }
}

# --- the job role ----------------------------------------------------------------------------

data "aws_iam_policy_document" "batch_assume" {
  count = var.batch_enabled ? 1 : 0

  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["emr-serverless.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
    # Only this application's job runs.
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [aws_emrserverless_application.batch[0].arn]
    }
  }
}

resource "aws_iam_role" "batch" {
  count              = var.batch_enabled ? 1 : 0
  name               = "${local.name}-batch-job"
  assume_role_policy = data.aws_iam_policy_document.batch_assume[0].json
}

data "aws_iam_policy_document" "batch" {
  count = var.batch_enabled ? 1 : 0

  statement {
    sid       = "ListTheTwoPrefixes"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.artifacts.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [var.s3_prefix, "${var.s3_prefix}/*", var.batch_s3_prefix, "${var.batch_s3_prefix}/*"]
    }
  }
  statement {
    sid       = "ReadTheArtifacts"
    actions   = ["s3:GetObject"]
    resources = [local.prefix_arn]
  }
  statement {
    sid       = "ReadTheCodeAndTheInputs"
    actions   = ["s3:GetObject"]
    resources = [for part in local.batch_read_only : "${aws_s3_bucket.artifacts.arn}/${var.batch_s3_prefix}/${part}/*"]
  }
  statement {
    sid       = "WriteTheResultsAndTheLogs"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
    resources = [for part in local.batch_read_write : "${aws_s3_bucket.artifacts.arn}/${var.batch_s3_prefix}/${part}/*"]
  }
  statement {
    sid       = "TheBucketKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.aws_region}.amazonaws.com"]
    }
  }
  # The driver reads the database password from the secret RDS keeps (EMR Serverless cannot
  # inject one key of a JSON secret as ECS does): README, "Batch on EMR Serverless".
  statement {
    sid       = "ReadTheDatabaseSecret"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_db_instance.main.master_user_secret[0].secret_arn]
  }
  statement {
    sid       = "TheSecretKey"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${var.aws_region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "batch" {
  count  = var.batch_enabled ? 1 : 0
  name   = "batch-${var.batch_s3_prefix}-artifacts-database"
  role   = aws_iam_role.batch[0].id
  policy = data.aws_iam_policy_document.batch[0].json
}

# --- outputs (null when batch_enabled is false) ----------------------------------------------

output "batch_application_id" {
  description = "The EMR Serverless application of the batch jobs (aws emr-serverless start-job-run --application-id)."
  value       = one(aws_emrserverless_application.batch[*].id)
}

output "batch_execution_role_arn" {
  description = "The batch jobs' role (start-job-run --execution-role-arn): reads the artifact backups, reads and writes under batch_s3_prefix."
  value       = one(aws_iam_role.batch[*].arn)
}

output "batch_s3" {
  description = "Where the batch jobs' files go: entry_point (scripts/batch.py), venv_archive and jdbc_driver (the batch-venv build's /dist) of this image_tag; the input, output, reports and logs prefixes."
  value       = var.batch_enabled ? local.batch_s3 : null
}

output "batch_spark_submit_parameters" {
  description = "sparkSubmitParameters of a batch job run: the archive and its Python, the JDBC driver, the sizes, the DC_* settings of the driver and the executors (no secret)."
  value       = var.batch_enabled ? local.batch_spark_submit_parameters : null
}

output "batch_start_job_run" {
  description = "A ready-to-run aws emr-serverless start-job-run of `scripts/batch.py score` (banking77, Parquet in and out under batch_s3); README, \"Batch on EMR Serverless\": the other modes, and the database secret's ARN that a job reading PostgreSQL adds."
  value = var.batch_enabled ? join(" \\\n    ", [
    "aws emr-serverless start-job-run",
    "--application-id ${aws_emrserverless_application.batch[0].id}",
    "--execution-role-arn ${aws_iam_role.batch[0].arn}",
    "--name score-banking77",
    "--job-driver '${jsonencode({
      sparkSubmit = {
        entryPoint            = local.batch_s3.entry_point
        entryPointArguments   = ["score", "--model", "banking77", "--input", "${local.batch_s3.input}banking77/", "--output", "${local.batch_s3.output}banking77/"]
        sparkSubmitParameters = local.batch_spark_submit_parameters
      }
    })}'",
    "--configuration-overrides '${jsonencode({
      monitoringConfiguration = { s3MonitoringConfiguration = { logUri = local.batch_s3.logs } }
    })}'",
  ]) : null
}
