output "get_credentials" {
  description = "Adds the cluster to your kubeconfig."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.pml.name} --zone ${var.zone} --project ${var.project}"
}

output "context" {
  value = "gke_${var.project}_${var.zone}_${google_container_cluster.pml.name}"
}

output "image" {
  description = "Where push-image.sh pushes the trainer image."
  value       = "${var.region}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.images.repository_id}/parallel-ml:latest"
}

output "model_dir_prefix" {
  value = "gs://${google_storage_bucket.models.name}"
}

output "trainer_service_account" {
  description = "The JobSpec's service_account.gcp_service_account."
  value       = google_service_account.trainer.email
}
