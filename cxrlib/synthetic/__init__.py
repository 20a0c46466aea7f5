"""The synthetic data sets, written in the EGD-CXR and REFLACX on-disk formats: anatomy,
a simulated radiologist's reading, and the writers. Imports only the bottom layer."""
