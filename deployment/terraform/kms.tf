# One customer-managed key for what this stack encrypts at rest: logs, secrets, the database
# (and its Performance Insights), EFS, ECR and the artifact bucket. Rotated yearly by AWS.

resource "aws_kms_key" "main" {
  description             = "${local.name}: logs, secrets, database, EFS, ECR and artifacts"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "main" {
  name          = "alias/${local.name}"
  target_key_id = aws_kms_key.main.key_id
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_111:A key policy's Resource "*" is the key itself; the account statement is AWS's default key policy, which hands the key's administration to IAM.
  #checkov:skip=CKV_AWS_356:As above: in a key policy "*" names only this key.
  #checkov:skip=CKV_AWS_109:As above: the account's own root principal, the default key policy.
  # The account administers the key through IAM, as with AWS-managed keys.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  # CloudWatch Logs encrypts this stack's log groups with it (and only those).
  statement {
    sid       = "CloudWatchLogs"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.aws_region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${var.aws_region}:${local.account_id}:log-group:/${var.project}/${var.environment}/*"]
    }
  }
}
