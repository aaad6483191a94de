variable "project" {
  description = "Google Cloud project id."
  type        = string
}

variable "region" {
  description = "Region of the bucket and the image repository."
  type        = string
  default     = "europe-west4"
}

variable "zone" {
  description = "Zone of the cluster (zonal: one control plane, cheaper)."
  type        = string
  default     = "europe-west4-a"
}

variable "cluster" {
  description = "GKE cluster name; its kubeconfig context is gke_PROJECT_ZONE_CLUSTER."
  type        = string
  default     = "pml"
}

variable "bucket" {
  description = "GCS bucket for model dirs (globally unique)."
  type        = string
}

variable "repository" {
  description = "Artifact Registry repository for the trainer image."
  type        = string
  default     = "pml"
}

variable "namespace" {
  description = "Kubernetes namespace the jobs run in (the JobSpec's namespace)."
  type        = string
  default     = "default"
}

variable "kubernetes_service_account" {
  description = "Kubernetes ServiceAccount the jobs share (the JobSpec's service_account.name, with create: false)."
  type        = string
  default     = "pml-trainer"
}

variable "image_platform" {
  description = "Platform of the trainer image push-image.sh builds: that of the machine types below (n2: amd64)."
  type        = string
  default     = "linux/amd64"
}

variable "worker_machine_type" {
  type    = string
  default = "n2-standard-8"
}

variable "ps_machine_type" {
  type    = string
  default = "n2-highmem-4"
}

variable "max_worker_nodes" {
  type    = number
  default = 8
}

variable "max_ps_nodes" {
  type    = number
  default = 4
}

variable "system_machine_type" {
  description = "Machine type of the one node that runs kube-system."
  type        = string
  default     = "e2-standard-2"
}

variable "max_spot_worker_nodes" {
  description = "Nodes of the Spot pool for workers; 0 makes no Spot pool."
  type        = number
  default     = 0
}
