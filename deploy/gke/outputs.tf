output "get_credentials" {
  description = "Adds the cluster to your kubeconfig."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.pml.name} --zone ${var.zone} --project ${var.project}"
}

output "context" {
  value = "gke_${var.project}_${var.zone}_${google_container_cluster.pml.name}"
}

output "image" {
  description = "Where push-image.sh pushes the trainer image: the JobSpec's image."
  value       = "${var.region}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.images.repository_id}/parallel-ml:latest"
}

output "image_platform" {
  description = "The platform push-image.sh builds the image for: that of the node pools."
  value       = var.image_platform
}

output "model_dir_prefix" {
  value = "gs://${google_storage_bucket.models.name}"
}

output "trainer_service_account" {
  description = "The Google service account the jobs act as through Workload Identity."
  value       = google_service_account.trainer.email
}

output "namespace" {
  description = "The JobSpec's namespace: where Workload Identity lets the ServiceAccount act."
  value       = var.namespace
}

output "kubernetes_service_account" {
  description = "The JobSpec's service_account.name, with service_account.create false."
  value       = var.kubernetes_service_account
}

output "service_account_manifest" {
  description = "That ServiceAccount, annotated for Workload Identity: terraform output -raw service_account_manifest | kubectl apply -f -"
  value = templatefile("${path.module}/service-account.yaml.tftpl", {
    namespace           = var.namespace
    name                = var.kubernetes_service_account
    gcp_service_account = google_service_account.trainer.email
  })
}
