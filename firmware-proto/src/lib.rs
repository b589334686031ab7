#![cfg_attr(not(feature = "std"), no_std)]
//! no_std device link for labmesh firmware instruments.
