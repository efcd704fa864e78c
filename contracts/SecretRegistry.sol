// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title SecretRegistry
/// @notice Records when the preimage of an HTLC secret hash was first revealed on chain. A lock
///         pays its receiver after settlement iff its secret was registered at or before the
///         lock's expiry.
contract SecretRegistry {
    /// @notice Unix time at which the secret of each hash (keccak256 of the 32-byte secret) was
    ///         registered; 0 if never.
    mapping(bytes32 secretHash => uint256 timestamp) public revealedAt;

    /// @notice Emitted the first time a secret is registered.
    event SecretRevealed(bytes32 indexed secretHash, bytes32 secret);

    /// @notice Registers `secret`. Registering a secret twice keeps the first time.
    /// @param secret The 32-byte preimage.
    /// @return registered True if this call registered it, false if it was already known.
    function registerSecret(bytes32 secret) external returns (bool registered) {
        return _register(secret);
    }

    /// @notice Registers several secrets in one transaction.
    /// @param secrets The 32-byte preimages.
    /// @return count How many were newly registered.
    function registerSecrets(bytes32[] calldata secrets) external returns (uint256 count) {
        for (uint256 i = 0; i < secrets.length; ++i) {
            if (_register(secrets[i])) ++count;
        }
    }

    function _register(bytes32 secret) private returns (bool) {
        bytes32 secretHash = keccak256(abi.encode(secret));
        if (revealedAt[secretHash] != 0) return false;
        revealedAt[secretHash] = block.timestamp;
        emit SecretRevealed(secretHash, secret);
        return true;
    }
}
