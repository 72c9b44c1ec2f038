# PostgreSQL for the training data, the model registry and the inference log: private,
# encrypted, backed up, its master password generated and kept by RDS in Secrets Manager.

resource "aws_db_subnet_group" "main" {
  name       = local.name
  subnet_ids = local.private_subnet_ids
}

resource "aws_db_parameter_group" "main" {
  name_prefix = "${local.name}-pg${var.db_engine_version}-"
  family      = "postgres${var.db_engine_version}"
  description = "${local.name}: TLS only, slow statements and lock waits logged"

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
  # Statements slower than half a second (the inference log's batched INSERTs take a few ms).
  parameter {
    name  = "log_min_duration_statement"
    value = "500"
  }
  parameter {
    name  = "log_lock_waits"
    value = "1"
  }
  parameter {
    name  = "log_connections"
    value = "1"
  }
  parameter {
    name  = "log_disconnections"
    value = "1"
  }
  parameter {
    name         = "shared_preload_libraries"
    value        = "pg_stat_statements"
    apply_method = "pending-reboot"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_db_instance" "main" {
  identifier     = local.name
  engine         = "postgres"
  engine_version = var.db_engine_version
  instance_class = var.db_instance_class

  db_name                       = var.db_name
  username                      = var.db_username
  manage_master_user_password   = true
  master_user_secret_kms_key_id = aws_kms_key.main.arn

  allocated_storage     = var.db_allocated_storage_gb
  max_allocated_storage = var.db_max_allocated_storage_gb
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.main.arn

  db_subnet_group_name   = aws_db_subnet_group.main.name
  vpc_security_group_ids = [aws_security_group.database.id]
  publicly_accessible    = false
  multi_az               = var.db_multi_az
  parameter_group_name   = aws_db_parameter_group.main.name

  backup_retention_period    = var.db_backup_retention_days
  backup_window              = "02:00-03:00"
  maintenance_window         = "sun:04:00-sun:05:00"
  copy_tags_to_snapshot      = true
  deletion_protection        = var.db_deletion_protection
  skip_final_snapshot        = !var.db_deletion_protection
  final_snapshot_identifier  = "${local.name}-final"
  auto_minor_version_upgrade = true
  apply_immediately          = false

  performance_insights_enabled          = true
  performance_insights_retention_period = var.db_performance_insights_retention_days
  performance_insights_kms_key_id       = aws_kms_key.main.arn
  monitoring_interval                   = 60
  monitoring_role_arn                   = aws_iam_role.rds_monitoring.arn
  enabled_cloudwatch_logs_exports       = ["postgresql", "upgrade"]
  iam_database_authentication_enabled   = true
}

resource "aws_iam_role" "rds_monitoring" {
  name               = "${local.name}-rds-monitoring"
  assume_role_policy = data.aws_iam_policy_document.rds_monitoring_assume.json
}

data "aws_iam_policy_document" "rds_monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

# The operators' bearer tokens of the API (DC_ADMIN_TOKEN: reload, rollback, promote;
# DC_FEEDBACK_TOKEN: POST /feedback), each written write-only from its ephemeral variable, so
# neither the plan nor the state ever holds it. A disabled one has no secret (its endpoints
# answer 403).
resource "aws_secretsmanager_secret" "token" {
  #checkov:skip=CKV2_AWS_57:Bearer tokens shared with operators and callers: rotated by a new value and a raised *_token_version, then a redeploy of the API (README, "Secrets").
  for_each                = local.tokens
  name                    = "${local.name}/${each.key}-token"
  description             = "${each.value.setting} of the prediction API"
  kms_key_id              = aws_kms_key.main.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "token" {
  for_each                 = local.tokens
  secret_id                = aws_secretsmanager_secret.token[each.key].id
  secret_string_wo         = each.key == "admin" ? var.admin_token : var.feedback_token
  secret_string_wo_version = each.value.version
}
