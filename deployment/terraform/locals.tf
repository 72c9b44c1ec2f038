# Names, the sizing rule, and every DC_* setting each task gets (tests/unit/test_terraform.py
# checks each name against dc.config.Settings).

locals {
  name       = "${var.project}-${var.environment}"
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  ec2        = var.launch_type == "EC2"

  # The images' ports and paths (deployment/docker/Dockerfile, dc.config.Settings).
  api_port      = 8000
  embedder_port = 8501
  spool_path    = "/var/lib/dc/spool"
  artifact_path = "/var/lib/dc/artifacts"
  # What the load balancer and the ECS health checks ask: /ready is 200 once the service can
  # answer (the API: heads loaded; the embedder: encoder loaded and warmed), /health once the
  # process is up.
  ready_path  = "/ready"
  health_path = "/health"

  # The sizing rule learned in production: a task gets the full CPU of its share, so CPU
  # never starves, and reserves half its memory limit, so that one more task always fits an
  # instance for scale-out while a new instance takes minutes to arrive. Fargate has no soft
  # reservation: there the limit is the size.
  api_memory_reservation      = floor(var.api_memory / 2)
  embedder_memory_reservation = floor(var.embedder_memory / 2)
  # One gunicorn worker (API) or encoder worker (embedder) per half vCPU of the share.
  api_workers     = max(1, floor(var.api_cpu / 512))
  encoder_workers = max(1, floor(var.embedder_cpu / 512))

  artifacts_bucket = var.artifacts_bucket_name != "" ? var.artifacts_bucket_name : "${local.name}-artifacts-${local.account_id}"
  embedder_dns     = "embedder"

  database_url = "postgresql+psycopg2://${var.db_username}@${aws_db_instance.main.address}:${aws_db_instance.main.port}/${var.db_name}"

  # --- settings: defaults, then the variables' extras, then what the stack wires -----------
  # The wiring always wins: api_settings cannot point the API at another database. The paths
  # (spool, artifacts, encoder), the bind addresses and the API's remote embedder mode are
  # set by the images themselves.
  defaults = {
    DC_LOG_LEVEL = "INFO"
  }
  wiring = {
    DC_AWS_REGION = var.aws_region
    # One backend everywhere: vectors of one fingerprint for the service, training and batch.
    DC_ENCODER_BACKEND = var.encoder_backend
  }
  database_wiring = {
    DC_DATABASE_URL = local.database_url
  }
  s3_wiring = {
    DC_S3_BUCKET = local.artifacts_bucket
    DC_S3_PREFIX = var.s3_prefix
  }

  api_wiring = merge(local.wiring, local.database_wiring, local.s3_wiring, {
    DC_API_PORT               = tostring(local.api_port)
    DC_API_GRACEFUL_TIMEOUT_S = tostring(var.api_graceful_timeout_s)
    DC_EMBEDDER_URL           = "http://${local.embedder_dns}:${local.embedder_port}"
  })
  api_settings = merge(
    local.defaults,
    { DC_API_WORKERS = tostring(local.api_workers) },
    var.api_settings,
    local.api_wiring,
  )

  embedder_wiring = merge(local.wiring, {
    DC_EMBEDDER_PORT = tostring(local.embedder_port)
  })
  embedder_settings = merge(
    local.defaults,
    {
      DC_ENCODER_WORKERS     = tostring(local.encoder_workers)
      DC_TF_INTER_OP_THREADS = tostring(local.encoder_workers)
    },
    var.embedder_settings,
    local.embedder_wiring,
  )

  trainer_wiring   = merge(local.wiring, local.database_wiring, local.s3_wiring)
  trainer_settings = merge(local.defaults, var.trainer_settings, local.trainer_wiring)

  # Names a variable's extras may not set: the wiring above and the secrets below.
  reserved_settings = setunion(
    keys(local.api_wiring), keys(local.embedder_wiring), keys(local.trainer_wiring),
    ["DC_DATABASE_PASSWORD", "DC_ADMIN_TOKEN", "DC_FEEDBACK_TOKEN"],
  )
  overridden_settings = setintersection(
    setunion(keys(var.api_settings), keys(var.embedder_settings), keys(var.trainer_settings)),
    local.reserved_settings,
  )

  # Secrets: ECS reads them at task start (execution role) and passes them as environment
  # variables; the task definition holds only their ARNs. The database password is the key
  # `password` of the secret RDS manages.
  database_secrets = {
    DC_DATABASE_PASSWORD = "${aws_db_instance.main.master_user_secret[0].secret_arn}:password::"
  }
  tokens = {
    for name, token in {
      admin    = { enabled = var.enable_admin_api, setting = "DC_ADMIN_TOKEN", version = var.admin_token_version }
      feedback = { enabled = var.enable_feedback_api, setting = "DC_FEEDBACK_TOKEN", version = var.feedback_token_version }
    } : name => token if token.enabled
  }
  api_secrets = merge(
    local.database_secrets,
    { for name, token in local.tokens : token.setting => aws_secretsmanager_secret.token[name].arn },
  )
  secret_arns = concat(
    [aws_db_instance.main.master_user_secret[0].secret_arn],
    [for name in keys(local.tokens) : aws_secretsmanager_secret.token[name].arn],
  )

  log_groups = toset(["api", "embedder", "jobs"])
}
