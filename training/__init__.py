"""The weakly supervised pipeline of Hong et al. (CVPR 2017): encoder + CAM, video segmentation, decoder."""
