# The API's spool (the inference log's journal and the last registry rows) on EFS: a row on
# local disk before its answer is sent must outlive the task that wrote it. Each process
# writes its own uniquely named, flock-ed segments, so every API task shares one folder and
# any of them replays what a stopped task left (persistence/inference_log/journal.py).

resource "aws_efs_file_system" "spool" {
  creation_token   = "${local.name}-spool"
  encrypted        = true
  kms_key_id       = aws_kms_key.main.arn
  performance_mode = "generalPurpose"
  throughput_mode  = "elastic"

  lifecycle_policy {
    transition_to_ia = "AFTER_30_DAYS"
  }

  tags = { Name = "${local.name}-spool" }
}

resource "aws_efs_backup_policy" "spool" {
  file_system_id = aws_efs_file_system.spool.id
  backup_policy {
    status = "ENABLED"
  }
}

resource "aws_efs_mount_target" "spool" {
  count           = length(local.private_subnet_ids)
  file_system_id  = aws_efs_file_system.spool.id
  subnet_id       = local.private_subnet_ids[count.index]
  security_groups = [aws_security_group.efs.id]
}

# The images' user (uid and gid 10001) owns /spool; tasks mount only this access point.
resource "aws_efs_access_point" "spool" {
  file_system_id = aws_efs_file_system.spool.id

  posix_user {
    uid = 10001
    gid = 10001
  }

  root_directory {
    path = "/spool"
    creation_info {
      owner_uid   = 10001
      owner_gid   = 10001
      permissions = "0750"
    }
  }

  tags = { Name = "${local.name}-spool" }
}

# Only through the access point, only over TLS, only from this stack's API task role.
resource "aws_efs_file_system_policy" "spool" {
  file_system_id = aws_efs_file_system.spool.id
  policy         = data.aws_iam_policy_document.efs.json
}

data "aws_iam_policy_document" "efs" {
  statement {
    sid       = "APITasksThroughTheAccessPoint"
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    resources = [aws_efs_file_system.spool.arn]
    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.task["api"].arn]
    }
    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.spool.arn]
    }
  }
  statement {
    sid       = "TLSOnly"
    effect    = "Deny"
    actions   = ["*"]
    resources = [aws_efs_file_system.spool.arn]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}
